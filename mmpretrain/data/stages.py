"""Per-sample stages: raw shard sample -> decoded members -> model inputs, as a registered, ordered list.

A stage is `stage(sample, context) -> sample` over a plain dict: it starts as the raw sample (one bytes value
per declared member, plus `__key__`, `__url__`, `__offset__`), stages add decoded values (`image`, `captions`,
`negatives`, ...) and finally model inputs, and whatever is a tensor at the end goes into the batch. A stage
that finds the sample unusable raises `SampleSkipped` with a reason (a counted skip, data/skips.py).

Stages are registered by name with a builder that receives the `StageEnv` (config, image transform, tokenizer),
and `data.stages` in the config names the list (empty: `default_stage_names`). A new modality is a decode stage
and a to-tensor stage registered here (and its member extensions declared in `declared_members`); a new
per-sample transform is one more name in the list. The order of the default list is the order of the checks
and of the random draws, which the determinism of the stream depends on: captions are drawn, then the image is
augmented, then negatives are drawn, all from the sample's own seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from PIL import Image

from mmpretrain.audio.config import AudioConfig
from mmpretrain.audio.decode import AUDIO_EXTENSIONS, load_clip, to_transport
from mmpretrain.data.config import DataConfig
from mmpretrain.data.decode import (IMAGE_EXTENSIONS, TEXT_EXTENSIONS, choose, decode_captions,
                                    decode_negatives, first_member, load_rgb, open_image)
from mmpretrain.data.online_negatives import OnlineNegatives
from mmpretrain.data.skips import SampleSkipped
from mmpretrain.errors import ConfigError
from mmpretrain.models.towers import ImageTransform, Tokenizer


@dataclass
class SampleContext:
    """What a stage knows of the sample beyond its members: its seed and a generator seeded by it, so a
    sample comes out the same whatever was read before it."""

    seed: int
    rng: random.Random


@dataclass(frozen=True)
class StageEnv:
    """What stage builders may use: the data config, the model's modalities and what turns each into inputs."""

    data: DataConfig
    image_transform: ImageTransform
    tokenizer: Tokenizer
    modalities: tuple[str, ...] = ("image", "text")
    audio: Optional[AudioConfig] = None  # model.audio, when the model has an audio tower


Sample = dict[str, Any]
Stage = Callable[[Sample, SampleContext], Sample]
_REGISTRY: dict[str, Callable[[StageEnv], Stage]] = {}


def register_stage(name: str) -> Callable[[Callable[[StageEnv], Stage]], Callable[[StageEnv], Stage]]:
    """Register a stage builder under `name` (the name `data.stages` uses)."""
    def add(builder: Callable[[StageEnv], Stage]) -> Callable[[StageEnv], Stage]:
        if name in _REGISTRY:
            raise ValueError(f"a data stage named {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder
    return add


def registered_stages() -> list[str]:
    return sorted(_REGISTRY)


def default_stage_names(config: DataConfig, modalities: Sequence[str] = ("image", "text")) -> list[str]:
    """The stages of the model's modalities, with hard negatives when the config asks for them (read from
    neg.json, or generated when data.online_negatives names types). The image-text
    order is the one every earlier run drew its random numbers in; audio comes after it, so adding a modality
    leaves the others' draws as they were."""
    image, text, negatives = "image" in modalities, "text" in modalities, config.negatives_per_sample > 0
    source = "generated_negatives" if config.online_negatives.enabled else "negatives"
    names = ["member_sizes", *(["image_header"] if image else []), *(["captions"] if text else []),
             *([source] if text and negatives else []), *(["caption_tokens"] if text else []),
             *(["image_pixels"] if image else []), *(["negative_tokens"] if text and negatives else [])]
    return names + (["audio"] if "audio" in modalities else [])


def build_stages(env: StageEnv) -> list[Stage]:
    names = list(env.data.stages) or default_stage_names(env.data, env.modalities)
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise ConfigError(f"data.stages: unknown stage(s) {unknown}; registered: {registered_stages()}")
    return [_REGISTRY[name](env) for name in names]


def run_stages(stages: Sequence[Stage], sample: Sample, context: SampleContext) -> dict[str, torch.Tensor]:
    """The sample through every stage; its tensors are the model inputs."""
    for stage in stages:
        sample = stage(sample, context)
    return {k: v for k, v in sample.items() if isinstance(v, torch.Tensor)}


@register_stage("member_sizes")
def _member_sizes(env: StageEnv) -> Stage:
    def stage(sample: Sample, context: SampleContext) -> Sample:
        if sample.get("__oversized__"):  # the reader left the member's bytes unread (data/safe_tar.py)
            raise SampleSkipped("member_too_large", sample["__oversized__"])
        return sample
    return stage


def _absent(env: StageEnv, modality: str, member: Any) -> bool:
    """Whether an optional modality is missing from this sample (its stages then emit a placeholder and a False
    `<modality>_mask`); a missing required member is left to the decoder, which skips the sample."""
    return member is None and modality in env.data.optional


def _presence(env: StageEnv, modality: str, present: bool) -> dict[str, torch.Tensor]:
    return {f"{modality}_mask": torch.tensor(present)} if modality in env.data.optional else {}


@register_stage("image_header")
def _image_header(env: StageEnv) -> Stage:
    """Open the image and check its header size; pixels are decoded by `image_pixels`."""
    def stage(sample: Sample, context: SampleContext) -> Sample:
        member = first_member(sample, IMAGE_EXTENSIONS)
        if _absent(env, "image", member):
            return {**sample, "image": None, **_presence(env, "image", False)}
        return {**sample, "image": open_image(member, env.data.limits), **_presence(env, "image", True)}
    return stage


@register_stage("captions")
def _captions(env: StageEnv) -> Stage:
    def stage(sample: Sample, context: SampleContext) -> Sample:
        member = first_member(sample, TEXT_EXTENSIONS)
        if _absent(env, "text", member):
            return {**sample, "captions": [""], **_presence(env, "text", False)}  # placeholder tokens, masked out
        return {**sample, "captions": decode_captions(member), **_presence(env, "text", True)}
    return stage


@register_stage("negatives")
def _negatives(env: StageEnv) -> Stage:
    """Hard-negative captions from `<key>.neg.json`; required, since every batch row needs its k negatives."""
    if env.data.online_negatives.enabled:  # neg.json is then not declared, so every sample would lack it
        raise ConfigError("data.stages names 'negatives' (read neg.json) but data.online_negatives.types is set: "
                          "name 'generated_negatives' instead")
    def stage(sample: Sample, context: SampleContext) -> Sample:
        key = str(sample.get("__key__", "?"))
        negatives = decode_negatives(sample["neg.json"], key) if sample.get("neg.json") is not None else []
        text_mask = sample.get("text_mask")
        if text_mask is not None and not bool(text_mask):
            return {**sample, "negatives": [""]}  # no caption, so no pair uses its negatives: placeholders
        if not negatives:
            raise SampleSkipped("negatives_invalid", f"sample {key!r} has no hard negatives (<key>.neg.json) "
                                f"but data.negatives_per_sample={env.data.negatives_per_sample}")
        return {**sample, "negatives": negatives}
    return stage


@register_stage("generated_negatives")
def _generated_negatives(env: StageEnv) -> Stage:
    """`negatives` generated from the sample's captions (data/online_negatives.py), seeded by the sample's seed:
    new ones each pass, the same ones at resume. A sample no configured type applies to is skipped, counted as
    `negatives_unavailable`: padding with other samples' captions could hand it a true caption as a negative."""
    if not env.data.online_negatives.enabled:
        raise ConfigError("data.stages names 'generated_negatives' but data.online_negatives.types is empty")
    generate = OnlineNegatives(env.data.online_negatives, env.data.negatives_per_sample)

    def stage(sample: Sample, context: SampleContext) -> Sample:
        text_mask = sample.get("text_mask")
        if text_mask is not None and not bool(text_mask):
            return {**sample, "negatives": [""]}  # no caption, so no pair uses its negatives: placeholders
        key = str(sample.get("__key__", "?"))
        negatives = generate(sample["captions"], key, context.seed)
        if not negatives:
            raise SampleSkipped("negatives_unavailable", f"sample {key!r}: none of data.online_negatives.types "
                                f"{env.data.online_negatives.types} applies to its captions")
        return {**sample, "negatives": negatives}
    return stage


@register_stage("caption_tokens")
def _caption_tokens(env: StageEnv) -> Stage:
    """`text`: one drawn caption [ctx], or `positives_per_sample` > 1 of them [P, ctx] (multi-positive loss)."""
    positives = env.data.positives_per_sample

    def stage(sample: Sample, context: SampleContext) -> Sample:
        tokens = env.tokenizer(choose(sample["captions"], positives, context.rng))
        return {**sample, "text": tokens[0] if positives == 1 else tokens}
    return stage


@register_stage("image_pixels")
def _image_pixels(env: StageEnv) -> Stage:
    """The training transform, seeded by the sample alone."""
    transform = env.image_transform
    # A transform that decodes for itself (data/augment.py) gets the image unopened; any other gets its pixels
    # decoded here, so an unreadable image is still a counted skip rather than an error inside the transform.
    lazy = getattr(transform, "decodes_lazily", False)

    blank: list[torch.Tensor] = []

    def stage(sample: Sample, context: SampleContext) -> Sample:
        if sample["image"] is None:  # an optional image this sample lacks: a placeholder of the right shape
            if not blank:
                with torch.random.fork_rng(devices=[]):
                    blank.append(torch.zeros_like(transform(Image.new("RGB", (64, 64)))))
            return {**sample, "image": blank[0]}
        image = sample["image"] if lazy else load_rgb(sample["image"])
        with torch.random.fork_rng(devices=[]):  # torchvision draws from torch's global RNG; leave it as it was
            # The CPU generator only: torch.manual_seed also seeds every accelerator backend, which in a worker
            # costs ~1 ms per sample (each uninitialised backend records a stack trace).
            torch.default_generator.manual_seed(context.seed)
            return {**sample, "image": transform(image)}
    return stage


@register_stage("audio")
def _audio(env: StageEnv) -> Stage:
    """`audio`: the clip as int16 PCM `[clip_samples]` at model.audio.sample_rate (a random crop, drawn from the
    sample's own generator after every image-text draw), for the log-mel on the training device."""
    if env.audio is None:
        raise ConfigError("data.stages names 'audio' but the model has no audio tower (model.towers)")
    config = env.audio

    def stage(sample: Sample, context: SampleContext) -> Sample:
        member = first_member(sample, AUDIO_EXTENSIONS)
        if _absent(env, "audio", member):
            return {**sample, "audio": torch.zeros(config.clip_samples, dtype=torch.int16),
                    **_presence(env, "audio", False)}
        if member is None:
            raise SampleSkipped("audio_missing", f"no {'/'.join(AUDIO_EXTENSIONS)} member")
        clip = load_clip(member, config, context.rng)
        return {**sample, "audio": to_transport(clip), **_presence(env, "audio", True)}
    return stage


@register_stage("negative_tokens")
def _negative_tokens(env: StageEnv) -> Stage:
    """`negative_text` [k, ctx]: k hard negatives drawn from the sample's own (after its captions were drawn)."""
    def stage(sample: Sample, context: SampleContext) -> Sample:
        drawn = choose(sample["negatives"], env.data.negatives_per_sample, context.rng)
        return {**sample, "negative_text": env.tokenizer(drawn)}
    return stage
