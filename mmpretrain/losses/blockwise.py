"""Blockwise all-pairs terms whose backward recomputes the logits, so memory is O(rows x chunk), not O(rows x M).

The two kernels are drop-in replacements for `functional.row_logsumexp` and `functional.softplus_sum`: same
inputs, same value, same gradients (to float rounding). Forward walks the columns in blocks of `chunk` and keeps
only an `[R]` running logsumexp (or a scalar sum); backward walks them again, recomputing each `[R, chunk]` block
of logits to form its gradient, then drops it. Saved for backward: the inputs (already alive as features) and
`[R]` floats. This is the Inf-CL / flash-attention trade: one extra `rows @ block.T` per block in backward in
exchange for never materialising the `[R, M]` logits, their softmax, or their gradient.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mmpretrain.errors import ConfigError
from mmpretrain.losses.functional import RowLogSumExp, SoftplusSum, row_logsumexp, softplus_sum

T = TypeVar("T")


def check_chunk_size(chunk_size: Optional[int], key: str = "chunk_size") -> None:
    """The one rule for a chunk: None (plain mode) or a positive number of columns. A ConfigError (a ValueError)
    naming `key`, so `loss.chunk_size` in a config and a module's argument report alike."""
    if chunk_size is not None and not chunk_size > 0:
        raise ConfigError(f"{key} must be a positive integer or None, got {chunk_size}")


def _blocks(num_columns: int, chunk: int) -> range:
    check_chunk_size(chunk)
    return range(0, num_columns, chunk)


def _column_grad(d_columns: Optional[torch.Tensor], start: int, weights: torch.Tensor, rows: torch.Tensor) -> None:
    """Write `weights.T @ rows` into the block of `d_columns` starting at `start` (no temporary)."""
    if d_columns is not None:
        torch.mm(weights.T, rows, out=d_columns[start:start + weights.shape[1]])


class _BlockwiseRowLogSumExp(torch.autograd.Function):
    """Per-row logsumexp of `scale * rows @ columns.T`, computed and differentiated one column block at a time."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor,
                chunk: int) -> torch.Tensor:
        lse = rows.new_full((rows.shape[0],), float("-inf"))
        for start in _blocks(columns.shape[0], chunk):
            block = torch.mm(rows, columns[start:start + chunk].T).mul_(scale)
            # Online logsumexp: merging block partials exactly is logaddexp of the two.
            lse = torch.logaddexp(lse, torch.logsumexp(block, dim=1))
            del block
        ctx.save_for_backward(rows, columns, scale, lse)
        ctx.chunk = chunk
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_lse: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        rows, columns, scale, lse = ctx.saved_tensors
        need_rows, need_columns, need_scale = ctx.needs_input_grad[:3]
        d_rows = torch.zeros_like(rows) if need_rows else None
        d_columns = torch.empty_like(columns) if need_columns else None
        d_scale = scale.new_zeros(())
        for start in _blocks(columns.shape[0], ctx.chunk):
            block_columns = columns[start:start + ctx.chunk]
            raw = torch.mm(rows, block_columns.T)
            # d lse_r / d logit_rc = softmax_rc; times the incoming per-row gradient.
            weights = (raw * scale).sub_(lse[:, None]).exp_().mul_(grad_lse[:, None])
            if need_scale:
                d_scale += torch.dot(weights.reshape(-1), raw.reshape(-1))
            del raw
            weights.mul_(scale)  # d logit / d rows = scale * columns
            if d_rows is not None:
                d_rows.addmm_(weights, block_columns)
            _column_grad(d_columns, start, weights, rows)
        return d_rows, d_columns, (d_scale.reshape(scale.shape) if need_scale else None), None


class _BlockwiseSoftplusSum(torch.autograd.Function):
    """Sum over all pairs of `softplus(scale * rows @ columns.T + bias)`, one column block at a time."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                chunk: int) -> torch.Tensor:
        total = rows.new_zeros(())
        for start in _blocks(columns.shape[0], chunk):
            block = torch.mm(rows, columns[start:start + chunk].T).mul_(scale).add_(bias)
            total += F.softplus(block).sum()
            del block
        ctx.save_for_backward(rows, columns, scale, bias)
        ctx.chunk = chunk
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        rows, columns, scale, bias = ctx.saved_tensors
        need_rows, need_columns, need_scale, need_bias = ctx.needs_input_grad[:4]
        d_rows = torch.zeros_like(rows) if need_rows else None
        d_columns = torch.empty_like(columns) if need_columns else None
        d_scale, d_bias = scale.new_zeros(()), bias.new_zeros(())
        for start in _blocks(columns.shape[0], ctx.chunk):
            block_columns = columns[start:start + ctx.chunk]
            raw = torch.mm(rows, block_columns.T)
            # d softplus(l) / d l = sigmoid(l)
            weights = (raw * scale).add_(bias).sigmoid_().mul_(grad_total)
            if need_scale:
                d_scale += torch.dot(weights.reshape(-1), raw.reshape(-1))
            del raw
            if need_bias:
                d_bias += weights.sum()
            weights.mul_(scale)
            if d_rows is not None:
                d_rows.addmm_(weights, block_columns)
            _column_grad(d_columns, start, weights, rows)
        return (d_rows, d_columns, d_scale.reshape(scale.shape) if need_scale else None,
                d_bias.reshape(bias.shape) if need_bias else None, None)


def in_fp32(kernel: Callable[..., T], *tensors: torch.Tensor) -> T:
    """`kernel(*tensors)` with the tensors in at least float32 and autocast off (the outputs stay float32).

    The recompute kernels' backward runs outside autocast and recomputes each logit block against the statistics
    the forward kept: a forward under autocast would keep a bf16-accurate logsumexp and the backward's softmax
    would be off by its error (3-5% in the gradients of a 64 x 64 bf16 test), and running sums over chunks and
    ranks in bf16 lose more. Gradients reach the callers' tensors in their own dtype through the casts."""
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    with torch.autocast(device_type=tensors[0].device.type, enabled=False):
        return kernel(*(t.to(dtype) for t in tensors))


def blockwise_row_logsumexp(rows: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor,
                            chunk: int) -> torch.Tensor:
    """Blockwise `functional.row_logsumexp`: `[R]` logsumexp with O(R x chunk) working memory (in float32 at
    least, see `in_fp32`)."""
    return in_fp32(lambda r, c, s: _BlockwiseRowLogSumExp.apply(r, c, s, chunk), rows, columns,
                   torch.as_tensor(scale, device=rows.device))


def blockwise_softplus_sum(rows: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                           chunk: int) -> torch.Tensor:
    """Blockwise `functional.softplus_sum`: scalar with O(R x chunk) working memory (in float32 at least)."""
    return in_fp32(lambda r, c, s, b: _BlockwiseSoftplusSum.apply(r, c, s, b, chunk), rows, columns,
                   torch.as_tensor(scale, device=rows.device), torch.as_tensor(bias, device=rows.device))


def logsumexp_kernel(chunk_size: Optional[int]) -> RowLogSumExp:
    """The row-logsumexp kernel for a chunk size: plain autograd when None, blockwise recompute otherwise."""
    return row_logsumexp if chunk_size is None else partial(blockwise_row_logsumexp, chunk=chunk_size)


def softplus_kernel(chunk_size: Optional[int]) -> SoftplusSum:
    """The all-pairs softplus kernel for a chunk size: plain autograd when None, blockwise recompute otherwise."""
    return softplus_sum if chunk_size is None else partial(blockwise_softplus_sum, chunk=chunk_size)
