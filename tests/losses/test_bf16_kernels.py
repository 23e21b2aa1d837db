"""The recompute kernels (blockwise logsumexp / softplus, the ring) under bf16: they run in float32 inside
(`blockwise.in_fp32`), so the gradients are the float32 kernel's on the same bf16 inputs up to the final rounding to
bf16. Before, a forward under autocast kept a bf16-accurate logsumexp that the fp32 backward recomputed against:
3-5% gradient error on this case."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmpretrain.losses.blockwise import blockwise_row_logsumexp, blockwise_softplus_sum
from mmpretrain.losses.functional import pair_logsumexp, row_logsumexp, softplus_sum
from mmpretrain.losses.ring import RingLayout, ring_pair_logsumexp

ROWS, DIM, SCALE, CHUNK = 64, 32, 100.0, 16


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    rows = F.normalize(torch.randn(ROWS, DIM, generator=generator), dim=1).bfloat16().requires_grad_()
    columns = F.normalize(torch.randn(ROWS, DIM, generator=generator), dim=1).bfloat16().requires_grad_()
    return rows, columns


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


def _grads(fn, rows: torch.Tensor, columns: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, ...]:
    rows, columns = rows.detach().clone().requires_grad_(), columns.detach().clone().requires_grad_()
    weights = torch.randn(ROWS, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        outputs = fn(rows, columns)
    sum(((o.float() * weights[:o.shape[0]]) if o.dim() else o.float()).sum() for o in outputs).backward()
    return outputs[0], rows.grad, columns.grad


KERNELS = {
    "blockwise_lse": (lambda r, c: (blockwise_row_logsumexp(r, c, torch.tensor(SCALE), CHUNK),),
                      lambda r, c: (row_logsumexp(r, c, torch.tensor(SCALE)),)),
    "blockwise_softplus": (lambda r, c: (blockwise_softplus_sum(r, c, torch.tensor(0.1), torch.tensor(-2.0), CHUNK),),
                           lambda r, c: (softplus_sum(r, c, torch.tensor(0.1), torch.tensor(-2.0)),)),
    "ring": (lambda r, c: ring_pair_logsumexp(r, c, torch.tensor(SCALE), RingLayout.uniform(ROWS, ROWS, 1), CHUNK),
             lambda r, c: pair_logsumexp(r, c, ROWS, torch.tensor(SCALE))),
}


@pytest.mark.parametrize("autocast", [True, False], ids=["autocast", "bf16-inputs"])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_bf16_gradients_are_the_float32_kernels(kernel: str, autocast: bool) -> None:
    ours, reference = KERNELS[kernel]
    rows, columns = _inputs()
    value, d_rows, d_columns = _grads(ours, rows, columns, autocast)
    ref_value, ref_rows, ref_columns = _grads(reference, rows.float(), columns.float(), autocast=False)
    assert value.dtype == torch.float32 and d_rows.dtype == torch.bfloat16  # fp32 out, grads in the inputs' dtype
    assert _relative(value, ref_value) < 1e-5
    assert _relative(d_rows, ref_rows) < 5e-3 and _relative(d_columns, ref_columns) < 5e-3
