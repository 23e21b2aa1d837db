"""Ring softmax (Inf-CL): CLIP's two all-pairs logsumexps with the text blocks travelling a ring of ranks.

`ClipLoss(impl="gather")` all-gathers the image and text features and, in backward, materialises their gradients:
O(global batch x D) per rank whatever the chunk. Here nothing is gathered. Each rank keeps its images as rows;
its text columns (positive captions, then hard negatives) travel from rank to rank, one neighbour per step, so a
rank only ever holds its own features, a block in hand and the one arriving: O(local batch x (D + chunk)).

One logit block serves both directions of the symmetric loss. For this rank's images (rows) against the block in
hand (columns), in column chunks:

- image->text: the row logsumexp, accumulated online (logaddexp) in this rank's `[B]` image lse;
- text->image: a caption's row over the images is a *column* here, so the column logsumexp over this rank's images
  is a partial of the caption's lse. That `[B * P]` partial travels with the block and has seen every rank's
  images when it comes home (one more hop after the block's last one). Hard negatives are only columns.

So each rank pair's logits are computed once in forward (the gathered version computes them once per direction).

Backward recomputes each chunk of logits and forms `W = softmax_row * g_row + softmax_column * g_column` (the
second term on caption columns only; `g` are the incoming gradients of the two lse outputs, the column ones
travelling with their block). Then `d images += scale * W @ block` stays here, and `scale * W.T @ images` is added
to the block's gradient accumulator, which travels with the block and comes home with the gradient of every
rank's loss with respect to those text features: the reduce-scatter of the gathered version, one hop at a time.
The `logit_scale` gradient is split the same way: the image->text part is this rank's loss's, the text->image
part travels home with the block, so each rank gets the gradient of its own loss, as with open_clip.

Traffic per step: the block (sent ahead, while the chunk loop runs) and a `[B * P]` partial in forward; the block,
its captions' lse and gradients, and the `[block, D]` gradient accumulator in backward. Per-rank memory: two
blocks and the accumulator pair (one in flight) plus a few `[B, chunk]` temporaries, flat in the world size.

Masks: each rank's block then has its own length (its complete pairs'); the blocks travel padded to the longest
and every rank knows every length (`RingLayout`), so it cuts the padding off before scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

from mmpretrain.losses.blockwise import check_chunk_size, in_fp32
from mmpretrain.losses.distributed import ProcessGroup, RingShift, pad_rows, rank_and_world_size

_BLOCK, _PARTIAL, _GRAD = 1, 2, 3  # message tags: a travelling block (and its statistics), an lse partial, grads


@dataclass(frozen=True)
class RingLayout:
    """Every rank's text block: `columns[r]` rows, the first `captions[r]` of them positive captions (each with a
    text->image row of its own), the rest hard negatives. The same on every rank."""

    columns: tuple[int, ...]
    captions: tuple[int, ...]

    @classmethod
    def uniform(cls, columns: int, captions: int, world_size: int) -> "RingLayout":
        """Every rank alike (the unmasked loss: same batch, P and k everywhere)."""
        return cls((columns,) * world_size, (captions,) * world_size)

    @classmethod
    def of_counts(cls, counts: Sequence[int], num_positives: int, negatives_per_sample: int) -> "RingLayout":
        """Per-rank sample counts (a masked loss's complete pairs) as block lengths."""
        return cls(tuple(n * (num_positives + negatives_per_sample) for n in counts),
                   tuple(n * num_positives for n in counts))

    @property
    def width(self) -> int:
        """The travelling blocks' length: every block is padded to the longest."""
        return max(self.columns)

    @property
    def caption_width(self) -> int:
        return max(self.captions)


def _chunks(columns: int, captions: int, chunk: Optional[int]) -> Iterator[tuple[int, int, bool]]:
    """(start, stop, are captions) over a block's columns; a chunk never mixes captions and hard negatives."""
    for lo, hi, are_captions in ((0, captions, True), (captions, columns, False)):
        step = max(hi - lo, 1) if chunk is None else chunk
        for start in range(lo, hi, step):
            yield start, min(start + step, hi), are_captions


def _padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    return pad_rows(tensor.detach(), rows).contiguous()


class _RingPairLogSumExp(torch.autograd.Function):
    """(this rank's image lse `[B]` over every text column of every rank, this rank's caption lse `[B * P]` over
    every image of every rank): `functional.pair_logsumexp` of the global batch, by ring."""

    @staticmethod
    def forward(ctx: Any, images: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor, layout: RingLayout,
                chunk: Optional[int], group: ProcessGroup) -> tuple[torch.Tensor, torch.Tensor]:
        rank, world_size = rank_and_world_size(group)
        ring = world_size > 1 and layout.width > 0  # every rank sees the same layout, so all skip alike
        image_lse = images.new_full((images.shape[0],), float("-inf"))
        block = _padded(columns, layout.width)
        partial = images.new_full((layout.caption_width,), float("-inf"))  # the block's captions' lse so far
        for step in range(world_size):
            owner = (rank - step) % world_size  # the blocks move right, so step s holds the (rank - s)'s
            ahead = RingShift([block], group, _BLOCK) if ring and step < world_size - 1 else None
            for start, stop, are_captions in _chunks(layout.columns[owner], layout.captions[owner], chunk):
                logits = torch.mm(images, block[start:stop].T).mul_(scale)
                torch.logaddexp(image_lse, torch.logsumexp(logits, dim=1), out=image_lse)
                if are_captions:
                    part = partial[start:stop]
                    torch.logaddexp(part, torch.logsumexp(logits, dim=0), out=part)
                del logits
            if ring:  # the partial follows its block, and after the last step goes home
                (partial,) = RingShift([partial], group, _PARTIAL).wait()
            if ahead is not None:
                (block,) = ahead.wait()
        del block
        caption_lse = partial[:layout.captions[rank]]
        ctx.save_for_backward(images, columns, scale, image_lse, caption_lse)
        ctx.layout, ctx.chunk, ctx.group = layout, chunk, group
        return image_lse, caption_lse

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_image_lse: torch.Tensor,
                 grad_caption_lse: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        images, columns, scale, image_lse, caption_lse = ctx.saved_tensors
        layout, chunk, group = ctx.layout, ctx.chunk, ctx.group
        rank, world_size = rank_and_world_size(group)
        ring = world_size > 1 and layout.width > 0
        d_images = torch.zeros_like(images)
        d_scale = scale.new_zeros(())  # image->text: this rank's loss
        block = _padded(columns, layout.width)
        # The block's captions' lse and incoming gradient travel with it (padding: lse 0, gradient 0).
        stats = torch.stack([_padded(caption_lse, layout.caption_width),
                             _padded(grad_caption_lse, layout.caption_width)])
        d_block = torch.zeros_like(block)  # gradient accumulator of the block in hand: every rank adds its part
        d_scale_block = scale.new_zeros((1,))  # text->image: the block owner's loss
        image_stats = (image_lse[:, None], grad_image_lse[:, None])
        for step in range(world_size):
            owner = (rank - step) % world_size
            ahead = RingShift([block, stats], group, _BLOCK) if ring and step < world_size - 1 else None
            for start, stop, are_captions in _chunks(layout.columns[owner], layout.captions[owner], chunk):
                block_chunk = block[start:stop]
                raw = torch.mm(images, block_chunk.T)
                logits = raw * scale
                # d lse_row / d logit = row softmax, times the row's incoming gradient
                weights = torch.sub(logits, image_stats[0]).exp_().mul_(image_stats[1])
                d_scale += torch.dot(weights.reshape(-1), raw.reshape(-1))
                if are_captions:  # the same for the caption's lse, a softmax down the column (in place)
                    logits.sub_(stats[0, start:stop]).exp_().mul_(stats[1, start:stop])
                    d_scale_block += torch.dot(logits.reshape(-1), raw.reshape(-1))
                    weights += logits
                del raw, logits  # no other name may hold them: the next chunk's would double the temporaries
                weights.mul_(scale)  # d logit / d image = scale * text, and vice versa
                d_images.addmm_(weights, block_chunk)
                d_block[start:stop].addmm_(weights.T, images)
                del weights
            if ahead is not None:
                block, stats = ahead.wait()
            if ring:  # the accumulators follow their block, and after the last step go home
                d_block, d_scale_block = RingShift([d_block, d_scale_block], group, _GRAD).wait()
        del block, stats
        d_columns = d_block[:columns.shape[0]]
        if d_columns.shape[0] != d_block.shape[0]:
            d_columns = d_columns.clone()  # not a view that keeps the padded buffer alive
        need_images, need_columns, need_scale = ctx.needs_input_grad[:3]
        return (d_images if need_images else None, d_columns if need_columns else None,
                (d_scale + d_scale_block[0]).reshape(scale.shape) if need_scale else None, None, None, None)


def ring_pair_logsumexp(images: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor, layout: RingLayout,
                        chunk: Optional[int] = None,
                        group: ProcessGroup = None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's image lse `[B]` and caption lse `[B * P]` over the whole global batch, by ring.

    `images [B, D]` are this rank's rows; `columns [C, D]` its text columns, positive captions (image-major) first,
    then hard negatives, as `layout.columns[rank]` / `layout.captions[rank]` say. `chunk` columns at a time
    (None: a rank's captions, then its negatives, in one piece each). Collective: every rank calls it with the
    same layout, chunk and group. Gradients: with respect to this rank's images and columns, those of the sum of
    every rank's loss (as through a gather); with respect to `scale`, those of this rank's outputs.
    """
    check_chunk_size(chunk)
    rank, world_size = rank_and_world_size(group)
    if len(layout.columns) != world_size or layout.columns[rank] != columns.shape[0]:
        raise ValueError(f"rank {rank} of {world_size} holds {columns.shape[0]} text columns but the ring layout "
                         f"says {layout.columns}")
    # In float32 at least, autocast off (blockwise.in_fp32): the blocks then travel in float32 under bf16 too.
    return in_fp32(lambda i, c, s: _RingPairLogSumExp.apply(i, c, s, layout, chunk, group), images, columns,
                   torch.as_tensor(scale, device=images.device))
