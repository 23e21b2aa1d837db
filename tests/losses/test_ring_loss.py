"""`ClipLoss(impl="ring")`: the same loss and gradients as the gathered ClipLoss (and open_clip's), per rank.

One job per world size (1 in-process, 2 and 4 on gloo) computes every case at once, since process start-up
dominates: float64 (compared to 1e-10, and with the naive single-process loss over the global batch) and float32
(compared to 1e-5), P = 1 or 2 positives, hard negatives grouped or flat, plain and chunked, unmasked and under
the masks of test_masked_losses. Per rank means: each rank's loss, and its gradients of image features, text
features, hard negatives and logit_scale, against the gathered version on the same rank. A last check counts live
tensor bytes (bench/loss_memory.py's tracker): the ring's per-rank peak does not grow with the world size.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mmpretrain.config import load_config
from mmpretrain.errors import ConfigError
from mmpretrain.losses import ClipLoss, LossConfig, build_loss
from mmpretrain.losses.ring import RingLayout, ring_pair_logsumexp
from mmpretrain.losses.functional import pair_logsumexp
from tests.gloo import run_on_ranks
from tests.losses.test_masked_losses import (VARIANTS, call, global_mask, masked_out_rows, rank_slice, run,
                                             samples, variant_inputs)
from tests.losses.test_masked_losses import reference as masked_reference
from tests.test_losses_distributed import LOCAL_BATCH, open_clip_loss_module
from tests.test_losses_distributed import reference as unmasked_reference

WORLD_SIZES = (1, 2, 4)
DTYPES = {"f64": torch.float64, "f32": torch.float32}
CHUNKS = {"whole": None, "chunk3": 3}  # 3 splits every block unevenly: 4 captions (P=1), 8 (P=2), 8 negatives
IMPLS = ("gather", "ring")
SCENARIOS = ("unmasked", "mixed", "none", "all")
FEATURES = ("image", "text", "negatives")
MEMORY = {"batch": 32, "dim": 16, "chunk": 8}


def bench_module() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "loss_memory.py"
    spec = importlib.util.spec_from_file_location("bench_loss_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_bytes(loss: ClipLoss, rank: int) -> int:
    """Peak live tensor bytes of one forward + backward on MEMORY-sized float32 features (inputs excluded)."""
    g = torch.Generator().manual_seed(rank)
    image, text = (F.normalize(torch.randn(MEMORY["batch"], MEMORY["dim"], generator=g), dim=-1).requires_grad_()
                   for _ in range(2))
    tracker = bench_module().LiveTensorBytes(exclude=[image, text])
    with tracker:
        loss(image, text, torch.tensor(10.0)).backward()
    return tracker.peak


def rank_cases(rank: int, world_size: int) -> dict[str, Any]:
    """Every case on this rank's slice; keys `impl/dtype/chunk/variant/scenario`, open_clip as `open_clip/dtype`."""
    results: dict[str, Any] = {}
    oc_clip = open_clip_loss_module().ClipLoss(local_loss=True, gather_with_grad=True, rank=rank,
                                               world_size=world_size)
    for dtype_name, dtype in DTYPES.items():
        for variant in VARIANTS:
            local = {k: v.to(dtype) for k, v in rank_slice(variant_inputs(world_size, variant), rank,
                                                           world_size).items()}
            if variant == "p1":
                results[f"open_clip/{dtype_name}"] = run(lambda image, text, scale, bias: oc_clip(image, text, scale),
                                                         local)
            for impl in IMPLS:
                for chunk_name, chunk in CHUNKS.items():
                    loss = ClipLoss(chunk_size=chunk, impl=impl)
                    for scenario in SCENARIOS:
                        mask = None if scenario == "unmasked" else global_mask(world_size, scenario)[
                            rank * LOCAL_BATCH:(rank + 1) * LOCAL_BATCH]
                        results[f"{impl}/{dtype_name}/{chunk_name}/{variant}/{scenario}"] = run(call(loss, mask),
                                                                                               local)
    return {**results, **rank_peaks(rank, world_size)}


def rank_peaks(rank: int, world_size: int) -> dict[str, int]:
    return {f"peak/{impl}": peak_bytes(ClipLoss(chunk_size=MEMORY["chunk"], impl=impl), rank) for impl in IMPLS}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict[int, list[dict[str, Any]]]:
    """Per-rank results of every case at every world size (one process at 1, a gloo job at 2 and 4), and at 3
    the memory peaks only."""
    out = {1: [rank_cases(0, 1)]}
    for world_size in WORLD_SIZES[1:]:
        out[world_size] = run_on_ranks(rank_cases, world_size, tmp_path_factory.mktemp(f"ring_world{world_size}"))
    out[3] = run_on_ranks(rank_peaks, 3, tmp_path_factory.mktemp("ring_world3"))
    return out


def close(a: torch.Tensor, b: torch.Tensor, dtype_name: str) -> None:
    if dtype_name == "f64":
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


CASES = [(d, c, v, s) for d in DTYPES for c in CHUNKS for v in VARIANTS for s in SCENARIOS]


@pytest.mark.parametrize("world_size", WORLD_SIZES, ids=lambda w: f"world{w}")
@pytest.mark.parametrize("dtype_name,chunk_name,variant,scenario", CASES, ids=["/".join(c) for c in CASES])
def test_ring_equals_the_gathered_loss_on_every_rank(jobs, world_size, dtype_name, chunk_name, variant, scenario):
    for rank, results in enumerate(jobs[world_size]):
        ring, gather = (results[f"{impl}/{dtype_name}/{chunk_name}/{variant}/{scenario}"] for impl in IMPLS)
        assert set(ring) == set(gather)
        for key, value in gather.items():
            if key != "bias":  # ignored by the softmax loss: no gradient on either side
                close(ring[key], value, dtype_name)


@pytest.mark.parametrize("world_size", WORLD_SIZES, ids=lambda w: f"world{w}")
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("chunk_name", CHUNKS)
def test_ring_equals_open_clip_on_every_rank(jobs, world_size, dtype_name, chunk_name):
    for results in jobs[world_size]:
        ours, theirs = results[f"ring/{dtype_name}/{chunk_name}/p1/unmasked"], results[f"open_clip/{dtype_name}"]
        for key in ("loss", "image", "text", "scale"):
            close(ours[key], theirs[key], dtype_name)


@pytest.mark.parametrize("world_size", WORLD_SIZES, ids=lambda w: f"world{w}")
@pytest.mark.parametrize("variant", ["p1", "hard"])
def test_ring_adds_up_to_the_naive_global_batch_loss(jobs, world_size, variant):
    """float64, unmasked: the mean of the rank losses, the rank-averaged scale gradient and the DDP-averaged
    feature gradients are those of the naive loss over the concatenated global batch."""
    ref = unmasked_reference(world_size, "clip" if variant == "p1" else "clip_hard")
    per_rank = [r[f"ring/f64/chunk3/{variant}/unmasked"] for r in jobs[world_size]]
    close(torch.stack([r["loss"] for r in per_rank]).mean(), ref["loss"], "f64")
    close(torch.stack([r["scale"] for r in per_rank]).mean(), ref["scale"], "f64")
    for key in ("image", "text", "negatives"):
        if key in ref:
            mine = torch.cat([r[key] for r in per_rank]) / world_size
            close(mine.reshape(ref[key].shape), ref[key], "f64")


@pytest.mark.parametrize("world_size", WORLD_SIZES, ids=lambda w: f"world{w}")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_masked_ring_is_the_naive_loss_on_the_complete_pairs(jobs, world_size, variant):
    per_rank = [r[f"ring/f64/chunk3/{variant}/mixed"] for r in jobs[world_size]]
    ref = masked_reference(world_size, "clip", variant, "mixed")
    close(torch.stack([r["loss"] for r in per_rank]).mean(), ref["loss"], "f64")
    close(torch.stack([r["scale"] for r in per_rank]).mean(), ref["scale"], "f64")
    for key in FEATURES:
        if key in ref:
            close(torch.cat([r[key] for r in per_rank]) / world_size, ref[key], "f64")
    for rank, r in enumerate(per_rank):
        dropped = masked_out_rows(world_size, rank, "mixed")
        for key in FEATURES:
            if key in r:
                assert torch.count_nonzero(samples(r[key], LOCAL_BATCH)[dropped]) == 0, (rank, key)
    for r in jobs[world_size]:  # no complete pair anywhere: 0, in the graph, zero gradients, no NaN
        out = r[f"ring/f64/chunk3/{variant}/none"]
        assert bool(out["in_graph"])
        assert all(torch.count_nonzero(v) == 0 and not v.isnan().any() for k, v in out.items() if k != "in_graph")


def test_ring_memory_per_rank_does_not_grow_with_the_world_size(jobs):
    """Same local batch at 2, 3 and 4 ranks: from 3 ranks on, the ring's peak is the same bytes (it only holds
    local-sized blocks), while the gathered loss's grows with the global batch (so the tracker sees the
    difference). At 2 ranks it is one block less: the block in hand at the first of the two steps is the rank's
    own, an input, which the tracker does not count; from 3 ranks on, a received block is in hand while the next
    one arrives."""
    ring = {w: max(r["peak/ring"] for r in jobs[w]) for w in (2, 3, 4)}
    gather = {w: max(r["peak/gather"] for r in jobs[w]) for w in (2, 3, 4)}
    block = MEMORY["batch"] * MEMORY["dim"] * 4
    assert ring[3] == ring[4] == ring[2] + block, ring
    assert gather[2] < gather[3] < gather[4] and ring[4] < gather[4], (ring, gather)


# ---- single-process tests ----

@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 5])
def test_ring_kernel_is_pair_logsumexp_with_exact_gradients_in_one_process(chunk):
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    columns = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    layout = RingLayout.uniform(7, 5, 1)  # 5 captions, then 2 hard negatives
    for ours, plain in zip(ring_pair_logsumexp(rows, columns, scale, layout, chunk),
                           pair_logsumexp(rows, columns, 5, scale)):
        torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda r, c, s: ring_pair_logsumexp(r, c, s, layout, chunk),
                                    (rows, columns, scale))


def test_ring_layout_must_match_this_ranks_columns():
    rows, columns = torch.randn(2, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="holds 4 text columns but the ring layout says"):
        ring_pair_logsumexp(rows, columns, torch.tensor(1.0), RingLayout.uniform(5, 2, 1))
    with pytest.raises(ValueError, match="chunk_size"):
        ring_pair_logsumexp(rows, columns, torch.tensor(1.0), RingLayout.uniform(4, 2, 1), chunk=0)


def test_impl_in_the_config_and_the_module():
    loss = build_loss(LossConfig(impl="ring", chunk_size=64))
    assert isinstance(loss, ClipLoss) and loss.impl == "ring" and loss.chunk_size == 64
    assert build_loss(LossConfig()).impl == "gather"
    assert build_loss(LossConfig(name="siglip", impl="ring")).chunk_size is None  # siglip is a ring anyway
    with pytest.raises(ConfigError, match=r"loss.impl: unknown implementation 'allgather'; expected one of "
                                          r"\['gather', 'ring'\]"):
        build_loss(LossConfig(impl="allgather"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="impl: unknown implementation 'x'"):
        ClipLoss(impl="x")
    assert load_config(None, ["loss.impl=ring"]).loss.impl == "ring"
    with pytest.raises(ConfigError, match="loss.impl: Invalid value 'allgather'") as info:
        load_config(None, ["loss.impl=allgather"])
    assert "\n" not in str(info.value)
