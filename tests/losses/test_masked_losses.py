"""Per-sample masks in the contrastive losses: the loss of the global batch restricted to its complete pairs.

The reference is the naive single-process loss (written out from the formula in test_losses_distributed) run on
the concatenation over ranks of the masked-in samples only, with their positives and hard negatives. One gloo
job per world size (1 runs in-process, 2 and 4 are spawned) computes every case at once, since process start-up
dominates; the parent compares: the mean over ranks of the losses with the reference loss, the rank-averaged
gradients (what DDP applies) with the reference's gradients, and masked-out rows with an exact zero.
"""

from __future__ import annotations

from typing import Callable, Optional

import pytest
import torch

from mmpretrain.losses import ClipLoss, SigLipLoss
from tests.gloo import run_on_ranks
from tests.test_losses_distributed import (CHUNK, LOCAL_BATCH, NUM_NEG, global_inputs, naive_clip,
                                           naive_siglip)

# Per-rank mask patterns (rank r takes pattern r): mixed, a rank with no complete pair, a full rank, a sparse one.
MIXED_PATTERNS = ("TFTT", "FFFF", "TTTT", "FFTF")
SCENARIOS = ("mixed", "none", "all")
# variant -> (text key, negatives layout): P = 1 or 2 positives, hard negatives as [B, k, D] or [B * k, D].
VARIANTS = {"p1": ("text", None), "p2": ("multi_text", None), "hard": ("multi_text", "grouped"),
            "hard_flat": ("text", "flat")}
LOSSES = {"clip": ClipLoss, "siglip": SigLipLoss}
MODES = {"plain": None, "blockwise": CHUNK}
FEATURES = ("image", "text", "negatives")


def global_mask(world_size: int, scenario: str) -> torch.Tensor:
    if scenario == "none":
        return torch.zeros(world_size * LOCAL_BATCH, dtype=torch.bool)
    if scenario == "all":
        return torch.ones(world_size * LOCAL_BATCH, dtype=torch.bool)
    return torch.tensor([c == "T" for r in range(world_size) for c in MIXED_PATTERNS[r]])


def variant_inputs(world_size: int, variant: str) -> dict[str, torch.Tensor]:
    """The global float64 batch for one variant; every feature's first dim is image-major (N * rows per sample)."""
    full = global_inputs(world_size)
    text_key, negatives_layout = VARIANTS[variant]
    inputs = {"image": full["image"], "text": full[text_key], "scale": full["scale"], "bias": full["bias"]}
    if negatives_layout == "grouped":
        inputs["negatives"] = full["negatives"]
    elif negatives_layout == "flat":
        inputs["negatives"] = full["negatives"].reshape(-1, full["negatives"].shape[-1])
    return inputs


def samples(tensor: torch.Tensor, num_samples: int) -> torch.Tensor:
    """`[N * r, ...]` rows as `[N, r, ...]`: one group of rows per sample (r = 1 for images and [N, P, D] texts)."""
    return tensor.reshape(num_samples, -1, *tensor.shape[1:])


def rank_slice(inputs: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    n = world_size * LOCAL_BATCH
    return {k: (v if v.dim() == 0 else samples(v, n)[rank * LOCAL_BATCH:(rank + 1) * LOCAL_BATCH].reshape(
        -1, *v.shape[1:])) for k, v in inputs.items()}


def run(fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`fn(**leaves)` on fresh leaf copies, backpropagated: the loss, whether it is in the graph, every gradient."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    loss = fn(**leaves)
    in_graph = loss.requires_grad
    if in_graph:
        loss.backward()
    out = {"loss": loss.detach(), "in_graph": torch.tensor(in_graph)}
    out.update({k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in leaves.items()})
    return out


def call(loss: torch.nn.Module, mask: Optional[torch.Tensor]) -> Callable[..., torch.Tensor]:
    def fn(image, text, scale, bias, negatives=None):
        return loss(image, text, scale, bias, negatives, mask=mask)
    return fn


def rank_cases(rank: int, world_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """Every masked case (and the unmasked path, for `all`) on this rank's slice; keys `loss/mode/variant/scn`."""
    results = {}
    for variant in VARIANTS:
        local = rank_slice(variant_inputs(world_size, variant), rank, world_size)
        for loss_name, cls in LOSSES.items():
            for mode, chunk in MODES.items():
                loss = cls(chunk_size=chunk)
                key = f"{loss_name}/{mode}/{variant}"
                for scenario in SCENARIOS:
                    mask = global_mask(world_size, scenario)[rank * LOCAL_BATCH:(rank + 1) * LOCAL_BATCH]
                    results[f"{key}/{scenario}"] = run(call(loss, mask), local)
                results[f"{key}/unmasked"] = run(call(loss, None), local)
    return results


def reference(world_size: int, loss_name: str, variant: str, scenario: str) -> dict[str, torch.Tensor]:
    """The naive loss on the complete pairs only, differentiated w.r.t. the full (unmasked) global inputs."""
    mask, n = global_mask(world_size, scenario), world_size * LOCAL_BATCH

    def complete(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else samples(t, n)[mask].reshape(-1, *t.shape[1:])

    def fn(image, text, scale, bias, negatives=None):
        if loss_name == "clip":
            return naive_clip(complete(image), complete(text), scale, complete(negatives))
        return naive_siglip(complete(image), complete(text), scale, bias, complete(negatives))
    return run(fn, variant_inputs(world_size, variant))


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda w: f"world{w}")
def ranks(request, tmp_path_factory) -> tuple[int, list[dict[str, dict[str, torch.Tensor]]]]:
    """Per-rank results of every case; one process (no process group) at world size 1, a gloo job otherwise."""
    world_size = request.param
    if world_size == 1:
        return 1, [rank_cases(0, 1)]
    out_dir = tmp_path_factory.mktemp(f"masked_world{world_size}")
    return world_size, run_on_ranks(rank_cases, world_size, out_dir)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def masked_out_rows(world_size: int, rank: int, scenario: str) -> torch.Tensor:
    return ~global_mask(world_size, scenario)[rank * LOCAL_BATCH:(rank + 1) * LOCAL_BATCH]


CASES = [(loss, mode, variant) for loss in LOSSES for mode in MODES for variant in VARIANTS]
CASE_IDS = ["/".join(case) for case in CASES]


@pytest.mark.parametrize("scenario", ["mixed", "all"])
@pytest.mark.parametrize("loss_name,mode,variant", CASES, ids=CASE_IDS)
def test_masked_loss_and_gradients_equal_the_naive_loss_on_the_complete_pairs(ranks, loss_name, mode, variant,
                                                                               scenario):
    world_size, results = ranks
    per_rank = [r[f"{loss_name}/{mode}/{variant}/{scenario}"] for r in results]
    ref = reference(world_size, loss_name, variant, scenario)
    close(torch.stack([r["loss"] for r in per_rank]).mean(), ref["loss"])
    for key in ("scale", "bias"):  # replicated parameters: DDP averages their per-rank gradients
        close(torch.stack([r[key] for r in per_rank]).mean(), ref[key])
    for key in FEATURES:
        if key in ref:
            # Rank r owns rows r*B:(r+1)*B (in samples); averaging over ranks is DDP's 1/W.
            close(torch.cat([r[key] for r in per_rank]) / world_size, ref[key])
    for rank, r in enumerate(per_rank):
        dropped = masked_out_rows(world_size, rank, scenario)
        for key in FEATURES:
            if key in r:
                assert torch.count_nonzero(samples(r[key], LOCAL_BATCH)[dropped]) == 0, (rank, key)


@pytest.mark.parametrize("loss_name,mode,variant", CASES, ids=CASE_IDS)
def test_no_complete_pair_anywhere_gives_zero_loss_and_zero_gradients_in_the_graph(ranks, loss_name, mode,
                                                                                  variant):
    _, results = ranks
    for r in results:
        out = r[f"{loss_name}/{mode}/{variant}/none"]
        assert bool(out["in_graph"])
        for key, value in out.items():
            if key != "in_graph":
                assert torch.count_nonzero(value) == 0 and not value.isnan().any(), key


@pytest.mark.parametrize("loss_name,mode,variant", CASES, ids=CASE_IDS)
def test_a_mask_of_all_true_equals_the_unmasked_path_on_every_rank(ranks, loss_name, mode, variant):
    _, results = ranks
    for r in results:
        masked, unmasked = r[f"{loss_name}/{mode}/{variant}/all"], r[f"{loss_name}/{mode}/{variant}/unmasked"]
        for key, value in unmasked.items():
            close(masked[key], value)


@pytest.mark.parametrize("cls", [ClipLoss, SigLipLoss])
def test_malformed_masks_and_negatives_are_value_errors(cls):
    x = variant_inputs(1, "hard_flat")
    args = (x["image"], x["text"], x["scale"], x["bias"])
    with pytest.raises(ValueError, match="mask must be a bool tensor of shape"):
        cls()(*args, mask=torch.ones(LOCAL_BATCH + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        cls()(*args, mask=torch.ones(LOCAL_BATCH))
    with pytest.raises(ValueError, match="do not split evenly"):
        cls()(*args, x["negatives"][:LOCAL_BATCH * NUM_NEG - 1], mask=torch.ones(LOCAL_BATCH, dtype=torch.bool))
