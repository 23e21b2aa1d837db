"""Distributed contrastive losses: global-batch parity, open_clip parity, blockwise mode, hard negatives.

Multi-process checks spawn one gloo job per world size (1, 2, 4) that computes every case at once (process
start-up dominates the cost); each rank writes its losses and gradients to tmp files and the parent compares
them with a naive single-process loss over the concatenated global batch, written out here from the formula.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from mmpretrain.losses import ClipLoss, LossConfig, SigLipLoss, build_loss
from mmpretrain.losses.blockwise import blockwise_row_logsumexp, blockwise_softplus_sum
from mmpretrain.losses.functional import row_logsumexp, softplus_sum
from tests.gloo import run_on_ranks

LOCAL_BATCH, DIM, NUM_POS, NUM_NEG, CHUNK = 4, 16, 2, 2, 3


def open_clip_loss_module() -> ModuleType:
    """open_clip/loss.py alone: importing the package costs seconds per spawned rank, the file needs only torch."""
    spec = importlib.util.find_spec("open_clip")
    path = Path(list(spec.submodule_search_locations)[0]) / "loss.py"
    module_spec = importlib.util.spec_from_file_location("open_clip_loss_only", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def global_inputs(world_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A float64 global batch: images, one or NUM_POS captions each, NUM_NEG hard negatives each, scale, bias."""
    g = torch.Generator().manual_seed(seed)
    n = world_size * LOCAL_BATCH

    def unit(*shape: int) -> torch.Tensor:
        return F.normalize(torch.randn(*shape, DIM, generator=g, dtype=torch.float64), dim=-1)

    return {"image": unit(n), "text": unit(n), "multi_text": unit(n, NUM_POS), "negatives": unit(n, NUM_NEG),
            "scale": torch.tensor(10.0, dtype=torch.float64), "bias": torch.tensor(-5.0, dtype=torch.float64)}


def run_case(fn, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Call `fn(**leaves)` on fresh leaf copies, backprop, and return the loss and every input's gradient."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    loss = fn(**leaves)
    loss.backward()
    out = {"loss": loss.detach()}
    out.update({k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in leaves.items()})
    return out


def rank_cases(rank: int, world_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """Every loss this test file checks, on this rank's slice of the global batch."""
    full = global_inputs(world_size)
    local = {k: (v if v.dim() == 0 else v[rank * LOCAL_BATCH:(rank + 1) * LOCAL_BATCH]) for k, v in full.items()}
    oc = open_clip_loss_module()
    oc_clip = oc.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
    oc_siglip = oc.SigLipLoss(rank=rank, world_size=world_size)
    simple = {k: local[k] for k in ("image", "text", "scale", "bias")}
    hard = {"image": local["image"], "text": local["multi_text"], "negatives": local["negatives"],
            "scale": local["scale"], "bias": local["bias"]}
    cases = {"open_clip/clip": (lambda image, text, scale, bias: oc_clip(image, text, scale), simple),
             "open_clip/siglip": (lambda image, text, scale, bias: oc_siglip(image, text, scale, bias), simple)}
    for mode, chunk in (("plain", None), ("blockwise", CHUNK)):
        for name, cls in (("clip", ClipLoss), ("siglip", SigLipLoss)):
            loss = cls(chunk_size=chunk)
            cases[f"{name}/{mode}"] = (lambda image, text, scale, bias, f=loss: f(image, text, scale, bias), simple)
            cases[f"{name}_hard/{mode}"] = (
                lambda image, text, negatives, scale, bias, f=loss: f(image, text, scale, bias, negatives), hard)
    return {name: run_case(fn, inputs) for name, (fn, inputs) in cases.items()}


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda w: f"world{w}")
def ranks(request, tmp_path_factory) -> tuple[int, list[dict[str, dict[str, torch.Tensor]]]]:
    """Per-rank results of one spawned gloo job (computed once per world size for all tests below)."""
    world_size = request.param
    out_dir = tmp_path_factory.mktemp(f"world{world_size}")
    return world_size, run_on_ranks(rank_cases, world_size, out_dir)


# ---- naive single-process references over the concatenated global batch, straight from the formulas ----

def naive_clip(image, text, scale, negatives=None):
    """Full-matrix InfoNCE: soft target 1/P on each of an image's P captions; negatives are extra columns."""
    texts = text if text.dim() == 3 else text[:, None]
    n, p, d = texts.shape
    columns = texts.reshape(n * p, d) if negatives is None else torch.cat([texts.reshape(n * p, d),
                                                                           negatives.reshape(-1, d)])
    target = torch.zeros(n, columns.shape[0], dtype=image.dtype)
    for i in range(n):
        target[i, i * p:(i + 1) * p] = 1 / p
    image_to_text = F.cross_entropy(scale * image @ columns.T, target)
    text_to_image = F.cross_entropy(scale * texts.reshape(n * p, d) @ image.T, torch.arange(n).repeat_interleave(p))
    return (image_to_text + text_to_image) / 2


def naive_siglip(image, text, scale, bias, negatives=None):
    """Full-matrix SigLIP: +1 on each image's own captions, -1 everywhere else, summed and divided by N."""
    texts = text if text.dim() == 3 else text[:, None]
    n, p, d = texts.shape
    columns = texts.reshape(n * p, d) if negatives is None else torch.cat([texts.reshape(n * p, d),
                                                                           negatives.reshape(-1, d)])
    labels = -torch.ones(n, columns.shape[0], dtype=image.dtype)
    for i in range(n):
        labels[i, i * p:(i + 1) * p] = 1
    return -F.logsigmoid(labels * (scale * image @ columns.T + bias)).sum() / n


def reference(world_size: int, case: str) -> dict[str, torch.Tensor]:
    full = global_inputs(world_size)
    if case == "clip":
        return run_case(naive_clip, {k: full[k] for k in ("image", "text", "scale")})
    if case == "siglip":
        return run_case(naive_siglip, {k: full[k] for k in ("image", "text", "scale", "bias")})
    hard = {"image": full["image"], "text": full["multi_text"], "negatives": full["negatives"],
            "scale": full["scale"]}
    if case == "clip_hard":
        return run_case(naive_clip, hard)
    return run_case(naive_siglip, {**hard, "bias": full["bias"]})


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---- multi-process tests ----

@pytest.mark.parametrize("case", ["clip", "siglip", "clip_hard", "siglip_hard"])
@pytest.mark.parametrize("mode", ["plain", "blockwise"])
def test_rank_losses_and_gradients_add_up_to_the_global_batch_loss(ranks, case, mode):
    world_size, results = ranks
    per_rank = [r[f"{case}/{mode}"] for r in results]
    ref = reference(world_size, case)
    close(torch.stack([r["loss"] for r in per_rank]).mean(), ref["loss"])
    for key in ("scale", "bias"):  # replicated parameters: DDP averages their per-rank gradients
        if key in ref:
            close(torch.stack([r[key] for r in per_rank]).mean(), ref[key])
    for key in ("image", "text", "negatives"):  # per-rank features: rank r owns rows r*B:(r+1)*B
        if key in ref:
            # Each rank's feature gradient is of the sum of all ranks' losses; DDP's 1/W mean turns it into the
            # gradient of the global (mean) loss.
            mine = torch.cat([r[key] for r in per_rank]) / world_size
            close(mine, ref[key])


@pytest.mark.parametrize("case", ["clip", "siglip"])
@pytest.mark.parametrize("mode", ["plain", "blockwise"])
def test_each_rank_matches_open_clip_on_the_same_inputs(ranks, case, mode):
    _, results = ranks
    for rank_result in results:
        ours, theirs = rank_result[f"{case}/{mode}"], rank_result[f"open_clip/{case}"]
        for key in ("loss", "image", "text", "scale", "bias"):
            close(ours[key], theirs[key])


def test_blockwise_mode_equals_plain_mode_on_every_rank(ranks):
    _, results = ranks
    for rank_result in results:
        for case in ("clip", "siglip", "clip_hard", "siglip_hard"):
            for key, value in rank_result[f"{case}/plain"].items():
                close(rank_result[f"{case}/blockwise"][key], value)


# ---- single-process tests ----

def hand_case() -> dict[str, torch.Tensor]:
    """Two orthogonal images, each with its own caption and one hard negative at cos 0.6 / 0.8 to the images."""
    return {"image": torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
            "text": torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
            "negatives": torch.tensor([[0.6, 0.8], [0.8, 0.6]], dtype=torch.float64),
            "scale": torch.tensor(2.0, dtype=torch.float64), "bias": torch.tensor(-1.0, dtype=torch.float64)}


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_softmax_hard_negatives_are_extra_columns_for_every_image_and_never_rows(chunk_size):
    x = hand_case()
    loss = ClipLoss(chunk_size=chunk_size)(x["image"], x["text"], x["scale"], negative_text_features=x["negatives"])
    # Image 0's logits: caption 0: 2*1, caption 1: 0, negative 0: 2*0.6, negative 1: 2*0.8 (image 1: mirrored).
    # Captions' rows see only the two images: logits 2 and 0. Negatives have no row.
    image_to_text = math.log(math.exp(2) + 1 + math.exp(1.2) + math.exp(1.6)) - 2
    text_to_image = math.log(math.exp(2) + 1) - 2
    assert loss.item() == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_sigmoid_hard_negatives_are_negative_pairs_for_every_image(chunk_size):
    x = hand_case()
    loss = SigLipLoss(chunk_size=chunk_size)(x["image"], x["text"], x["scale"], x["bias"], x["negatives"])
    softplus = lambda v: math.log1p(math.exp(v))  # -logsigmoid(-v): a pair labelled negative
    # Per image: positive logit 2-1=1 -> softplus(-1); other caption 0-1 -> softplus(-1);
    # negatives 1.2-1 and 1.6-1 -> softplus(0.2), softplus(0.6). Both images alike, divided by B=2.
    per_image = softplus(-1) + softplus(-1) + softplus(0.2) + softplus(0.6)
    assert loss.item() == pytest.approx(2 * per_image / 2, rel=1e-12)


def test_multiple_positives_average_the_cross_entropy_over_an_images_captions():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    captions = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [0.8, 0.6]]], dtype=torch.float64)
    loss = ClipLoss()(image, captions, torch.tensor(1.0, dtype=torch.float64))
    # Image 0 against captions (1, 0.6 | 0, 0.8): mean of -log p over its two captions (image 1 mirrored).
    lse = math.log(math.e + math.exp(0.6) + 1 + math.exp(0.8))
    image_to_text = lse - (1 + 0.6) / 2
    # Caption rows against the two images: (1, 0), (0.6, 0.8) for image 0's captions, mirrored for image 1's.
    text_to_image = ((math.log(math.e + 1) - 1) + (math.log(math.exp(0.6) + math.exp(0.8)) - 0.6)) / 2
    assert loss.item() == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-12)


@pytest.mark.parametrize("num_columns,chunk", [(7, 3), (6, 6), (5, 8)])
def test_blockwise_kernels_have_exact_gradients(num_columns, chunk):
    g = torch.Generator().manual_seed(num_columns)
    rows = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    columns = torch.randn(num_columns, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    close(blockwise_row_logsumexp(rows, columns, scale, chunk), row_logsumexp(rows, columns, scale))
    close(blockwise_softplus_sum(rows, columns, scale, bias, chunk), softplus_sum(rows, columns, scale, bias))
    assert torch.autograd.gradcheck(lambda r, c, s: blockwise_row_logsumexp(r, c, s, chunk), (rows, columns, scale))
    assert torch.autograd.gradcheck(lambda r, c, s, b: blockwise_softplus_sum(r, c, s, b, chunk),
                                    (rows, columns, scale, bias))


@pytest.mark.parametrize("cls", [ClipLoss, SigLipLoss])
def test_blockwise_mode_matches_plain_mode_in_float32(cls):
    inputs = {k: v.float() for k, v in global_inputs(world_size=8).items()}
    inputs["negatives"] = inputs["negatives"].reshape(-1, DIM)  # the [B * k, D] layout
    call = lambda f: lambda image, multi_text, negatives, scale, bias: f(image, multi_text, scale, bias, negatives)
    args = {k: inputs[k] for k in ("image", "multi_text", "negatives", "scale", "bias")}
    plain, blockwise = run_case(call(cls()), args), run_case(call(cls(chunk_size=5)), args)
    for key, value in plain.items():
        torch.testing.assert_close(blockwise[key], value, rtol=1e-5, atol=1e-6)


def test_siglip_matches_open_clip_in_one_process():
    x = global_inputs(world_size=2)
    args = {k: x[k] for k in ("image", "text", "scale", "bias")}
    ours = run_case(lambda image, text, scale, bias: SigLipLoss()(image, text, scale, bias), args)
    oc_siglip = open_clip_loss_module().SigLipLoss()
    theirs = run_case(lambda image, text, scale, bias: oc_siglip(image, text, scale, bias), args)
    for key, value in theirs.items():
        close(ours[key], value)


def test_build_loss_from_a_structured_yaml_config():
    config = OmegaConf.merge(OmegaConf.structured(LossConfig), {"name": "siglip", "chunk_size": 256})
    loss = build_loss(OmegaConf.to_object(config))
    assert isinstance(loss, SigLipLoss) and loss.chunk_size == 256
    assert isinstance(build_loss(LossConfig()), ClipLoss) and build_loss(LossConfig()).chunk_size is None
    with pytest.raises(ValueError, match="chunk_size"):
        ClipLoss(chunk_size=0)
    with pytest.raises(ValueError, match="loss.chunk_size must be a positive integer"):
        build_loss(LossConfig(chunk_size=-1))  # a section built in code gets the config's check
    with pytest.raises(ValueError, match="loss.name: unknown loss 'focal'"):
        build_loss(LossConfig(name="focal"))  # type: ignore[arg-type]
