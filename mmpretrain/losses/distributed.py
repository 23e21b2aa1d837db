"""The collectives the losses need: gather with gradient (fixed or per-rank row counts) and a ring shift.

Everything degrades to the identity in one process (no process group, or a group of one), so the losses run
unchanged under `python train.py` and under torchrun. Every rank must make the same calls in the same order:
these are sync points, in forward and again (mirrored) in backward.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

ProcessGroup = Optional[dist.ProcessGroup]


def rank_and_world_size(group: ProcessGroup = None) -> tuple[int, int]:
    """This process's rank and the world size; (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def all_gather_with_grad(tensor: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0 (rank order), keeping the graph.

    Backward sums each rank's gradient for every slice and hands each rank the total for its own slice
    (a reduce-scatter), which is what makes per-rank local losses add up to the global-batch gradient.
    """
    if rank_and_world_size(group)[1] == 1:
        return tensor
    return _GatherRows.apply(tensor, group)


class _GatherRows(torch.autograd.Function):
    """All-gather into one buffer; backward reduces each slice to its owner in place.

    Written out rather than `torch.distributed.nn.functional.all_gather` because that one's backward on gloo
    emulates reduce-scatter with an all-to-all plus a stack, i.e. two more `[N, D]` buffers at the moment the
    blockwise losses are at their peak; this one needs none beyond the incoming gradient itself.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        world_size = dist.get_world_size(group)
        gathered = tensor.new_empty((world_size * tensor.shape[0], *tensor.shape[1:]))
        dist.all_gather_into_tensor(gathered, tensor.contiguous(), group=group)
        return gathered

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        rank, world_size = rank_and_world_size(ctx.group)
        # The incoming gradient is ours to consume (nothing reads it after this node), so reduce in place.
        slices = grad.contiguous().chunk(world_size)
        for owner, part in enumerate(slices):
            dist.reduce(part, dst=_global_rank(ctx.group, owner), op=dist.ReduceOp.SUM, group=ctx.group)
        # Clone: a view would keep the whole [N, D] buffer alive inside the feature's gradient.
        return slices[rank].clone(), None


def all_gather_counts(count: int, device: torch.device, group: ProcessGroup = None) -> list[int]:
    """Every rank's `count`, in rank order; no gradient. `device` is where the collective runs (the features').

    Python ints, because they size the buffers of the variable-length collectives that follow, which every rank
    must call with the same shapes: one host sync per loss call (boolean masking already costs one anyway).
    """
    if rank_and_world_size(group)[1] == 1:
        return [count]
    gathered = torch.empty(dist.get_world_size(group), dtype=torch.int64, device=device)
    dist.all_gather_into_tensor(gathered, torch.tensor([count], dtype=torch.int64, device=device), group=group)
    return gathered.tolist()


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """`tensor` followed by zero rows up to `rows` in all (differentiable: the padding gets no gradient)."""
    missing = rows - tensor.shape[0]
    if missing == 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros((missing, *tensor.shape[1:]))], dim=0)


def all_gather_varlen_with_grad(tensor: torch.Tensor, counts: Sequence[int],
                                group: ProcessGroup = None) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0 when rank r holds `counts[r]` rows, keeping the graph.

    `counts` must be the same list on every rank (from `all_gather_counts`). Each rank pads to the largest count,
    the padded blocks are gathered with `all_gather_with_grad` and the padding is cut out again, so the gradient
    is exactly that of the concatenation: the padding rows receive zero, and each rank gets the sum over ranks of
    the gradients of its real rows. A rank with no rows still takes part; if every count is zero there is nothing
    to exchange and every rank returns its own (empty) tensor, a decision all ranks take alike.
    """
    rank, world_size = rank_and_world_size(group)
    if tensor.shape[0] != counts[rank]:
        raise ValueError(f"rank {rank} holds {tensor.shape[0]} rows but counts says {counts[rank]}")
    longest = max(counts)
    if world_size == 1 or longest == 0:
        return tensor
    gathered = all_gather_with_grad(pad_rows(tensor, longest), group)
    return torch.cat([gathered[r * longest:r * longest + n] for r, n in enumerate(counts)], dim=0)


def _global_rank(group: ProcessGroup, group_rank: int) -> int:
    # P2P ops address peers by global rank even inside a subgroup.
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def _exchange(tensor: torch.Tensor, send_to: int, receive_from: int, group: ProcessGroup) -> torch.Tensor:
    """Send `tensor` to one peer and receive a same-shaped tensor from another, both posted at once."""
    received = torch.empty_like(tensor)
    ops = [dist.P2POp(dist.isend, tensor.contiguous(), _global_rank(group, send_to), group=group),
           dist.P2POp(dist.irecv, received, _global_rank(group, receive_from), group=group)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()  # sync point: the next block needs the neighbour's features
    return received


class _Exchange(torch.autograd.Function):
    """Send a tensor to one peer and receive one from another; the gradients make the mirrored trip."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, send_to: int, receive_from: int,
                group: ProcessGroup) -> torch.Tensor:
        ctx.send_to, ctx.receive_from, ctx.group = send_to, receive_from, group
        return _exchange(tensor, send_to, receive_from, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], None, None, None]:
        # The gradient of what we received belongs to the rank we received it from: send it back there, and
        # take ours from the rank we sent to. Through autograd again, so a chain of hops unwinds hop by hop.
        return _Exchange.apply(grad, ctx.receive_from, ctx.send_to, ctx.group), None, None, None


def ring_shift_with_grad(tensor: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """The left neighbour's `tensor` (this rank's goes to the right neighbour), differentiably."""
    rank, world_size = rank_and_world_size(group)
    if world_size == 1:
        return tensor
    return _Exchange.apply(tensor, (rank + 1) % world_size, (rank - 1) % world_size, group)


class RingShift:
    """Tensors on their way to the right neighbour while the left neighbour's same-shaped ones arrive; `wait()`
    returns those. Started without waiting, so the transfer runs (gloo's threads, NCCL's stream) while the caller
    computes. Every rank must start the same shifts in the same order; `tag` keeps the kinds of message of one
    algorithm apart (a receive only ever matches the send of the same tag)."""

    def __init__(self, tensors: Sequence[torch.Tensor], group: ProcessGroup = None, tag: int = 0) -> None:
        rank, world_size = rank_and_world_size(group)
        right, left = _global_rank(group, (rank + 1) % world_size), _global_rank(group, (rank - 1) % world_size)
        self._sent: Optional[list[torch.Tensor]] = [t.contiguous() for t in tensors]
        self._received = [torch.empty_like(t) for t in self._sent]
        ops = [dist.P2POp(dist.isend, t, right, group=group, tag=tag) for t in self._sent]
        ops += [dist.P2POp(dist.irecv, t, left, group=group, tag=tag) for t in self._received]
        self._requests = dist.batch_isend_irecv(ops)

    def wait(self) -> list[torch.Tensor]:
        for request in self._requests:
            request.wait()  # sync point: both the sends (their buffers are released here) and the receives
        self._sent = None
        return self._received
