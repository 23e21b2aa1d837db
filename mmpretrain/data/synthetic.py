"""`data.synthetic`: one pre-built batch per rank, handed out at every step, already on the training device.

For throughput work: with no shard read, no decoding and no host-to-device copy (the engine's
`.to(device, non_blocking=True)` finds the batch where it is), samples/s is the model-only ceiling of the step.
Compared with a real run's, it tells whether the data path or the step is the bottleneck.

NOT learnable data: every row is random (a PNG of uniform random pixels, captions of random letter-string
"words", hard negatives likewise, white-noise audio), and the same batch comes back every step, so the loss
only says the step ran (it falls as the model memorises the one batch), never what the model learnt.

The batch is a real batch by construction: the random raw samples (one member per declared kind: png, txt,
neg.json, wav) go through the stages a shard sample goes through (data/stages.py, `data.stages` or the default
for the model's towers) and are collated as a reader collates them. So its keys, dtypes and shapes are a
TrainLoader batch's for the same config: uint8 images at the model's size (data.augment.uint8_transfer), token
ids at the context length, [B, P, ctx] positives, [B, k, ctx] negatives, int16 audio, `<modality>_mask` for
data.optional. Content is seeded by (train.seed, rank, row): the same config gives the same batch.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import random
import string
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from mmpretrain.data.config import DataConfig
from mmpretrain.data.online_negatives import OnlineNegativesConfig
from mmpretrain.data.skips import SKIP_REASONS, SampleSkipped, SkipBudget, skip_metrics
from mmpretrain.data.stages import SampleContext, StageEnv, build_stages, default_stage_names, run_stages
from mmpretrain.errors import ConfigError, DataError

log = logging.getLogger(__name__)

STATE_KIND = "synthetic"  # marks a checkpoint's data state as a synthetic run's (TrainLoader refuses it)
DEFAULT_RAW_SIZE = 256    # raw image side when the transform's output size is unknown (it resizes anyway)


def _words(rng: random.Random, low: int, high: int) -> str:
    """A "caption" of random lowercase letter strings: tokenizes like text, means nothing."""
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9)))
                    for _ in range(rng.randint(low, high)))


def _random_png(rng: random.Random, size: tuple[int, int]) -> bytes:
    height, width = size
    pixels = np.random.default_rng(rng.getrandbits(64)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG", compress_level=0)  # random pixels do not compress
    return out.getvalue()


def _noise_wav(rng: random.Random, samples: int, sample_rate: int) -> bytes:
    import soundfile  # only models with an audio tower need it

    wave = 0.1 * np.random.default_rng(rng.getrandbits(64)).standard_normal(samples).astype(np.float32)
    out = io.BytesIO()
    soundfile.write(out, wave, sample_rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _raw_size(env: StageEnv) -> tuple[int, int]:
    """The train transform's output size (its crop's), so the pixels reach the batch unresized."""
    size = getattr(getattr(env.image_transform, "crop", None), "size", None)
    if isinstance(size, Sequence) and len(size) == 2:
        return int(size[0]), int(size[1])
    return DEFAULT_RAW_SIZE, DEFAULT_RAW_SIZE


def raw_sample(env: StageEnv, rng: random.Random, key: str) -> dict[str, Any]:
    """A raw shard sample of random members, one for every member kind the stages may read."""
    data = env.data
    sample: dict[str, Any] = {"__key__": key, "__url__": "synthetic", "__offset__": 0}
    if "image" in env.modalities:
        sample["png"] = _random_png(rng, _raw_size(env))
    if "text" in env.modalities:
        sample["txt"] = "\n".join(_words(rng, 5, 12) for _ in range(data.positives_per_sample)).encode()
        if data.negatives_per_sample > 0:
            sample["neg.json"] = json.dumps([_words(rng, 5, 12) for _ in range(data.negatives_per_sample)]).encode()
    if "audio" in env.modalities and env.audio is not None:
        seconds = min(env.audio.clip_seconds, env.audio.max_seconds)  # never `audio_too_long`
        sample["wav"] = _noise_wav(rng, max(1, round(seconds * env.audio.sample_rate)), env.audio.sample_rate)
    return sample


def synthetic_env(env: StageEnv) -> tuple[StageEnv, list[str]]:
    """The env and stage names that turn `raw_sample`s into the batch. Online negatives are read from the
    synthetic neg.json instead: the generators' rules need real captions (random words would be skipped as
    `negatives_unavailable`), and both paths end in `negative_tokens`, so the shapes are the same."""
    names = list(env.data.stages) or default_stage_names(env.data, env.modalities)
    if not env.data.online_negatives.enabled:
        return env, names
    data = dataclasses.replace(env.data, online_negatives=OnlineNegativesConfig(),
                               stages=["negatives" if n == "generated_negatives" else n for n in names])
    return dataclasses.replace(env, data=data), list(data.stages)


def build_synthetic_batch(env: StageEnv, seed: int, rank: int = 0) -> dict[str, torch.Tensor]:
    """`env.data.batch_size` random samples through the real stages, collated (on the CPU); seeded by
    (seed, rank, row)."""
    stage_env, names = synthetic_env(env)
    stages = build_stages(stage_env)
    rows = []
    for row in range(env.data.batch_size):
        rng = random.Random(f"{seed}-synthetic-{rank}-{row}")  # str seeds hash with sha512: stable everywhere
        sample = raw_sample(env, rng, f"synthetic-{rank}-{row}")
        sample_seed = rng.getrandbits(63)
        try:
            rows.append(run_stages(stages, sample, SampleContext(sample_seed, random.Random(sample_seed))))
        except SampleSkipped as e:
            raise ConfigError(f"data.synthetic: the stages {names} skipped a synthetic sample ({e}); synthetic "
                              "samples carry png, txt, neg.json and wav members only") from None
    return default_collate(rows)


class SyntheticInfo:
    """What the training log states at start, in place of the shard sources."""

    def __init__(self, batch_size: int, device: torch.device) -> None:
        self.batch_size, self.device = batch_size, device

    def describe(self, run_samples: Optional[int] = None) -> str:
        return (f"synthetic (data.synthetic=true): one pre-built batch of {self.batch_size} random samples per rank "
                f"on {self.device}, handed out at every step; no shard is read (a throughput ceiling, not "
                "learnable data)")


class SyntheticLoader:
    """TrainLoader's interface over one batch (see module doc): `next_batch`, `close`, `skip_report`,
    `state_dict` / `load_state_dict` (the number of batches handed out), `info`."""

    def __init__(self, config: DataConfig, env: StageEnv, seed: int, rank: int, world_size: int,
                 device: torch.device) -> None:
        config.validate()
        self.config, self.rank, self.world_size = config, rank, world_size
        batch = build_synthetic_batch(env, seed, rank)
        self.batch = {key: value.to(device) for key, value in batch.items()}
        self.info = SyntheticInfo(config.batch_size, device)
        self.batches = 0
        self.budget = SkipBudget(config.max_skip_fraction, config.skip_window)
        self._closed = False

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self._closed:
            raise RuntimeError("this SyntheticLoader is closed")
        self.batches += 1
        return dict(self.batch)  # a new dict (a consumer may change its keys), the same tensors (no copy)

    def close(self) -> None:
        self._closed = True

    def _delivered(self) -> int:
        # every rank hands out the same number of batches, so the global count needs no collective
        return self.batches * self.config.batch_size * self.world_size

    def skip_report(self) -> tuple[dict[str, float], Optional[DataError]]:
        """The real loader's metric keys with zero skips; never an error. No collective: nothing to sum."""
        counts = [self._delivered()] + [0] * len(SKIP_REASONS)
        report = skip_metrics(counts)
        fraction = self.budget.fraction(counts)
        if fraction is not None:
            report["data/skip_fraction"] = fraction
        return report, None

    def state_dict(self) -> dict[str, Any]:
        # `skips` in the ledger's layout, so `mmpretrain doctor` reads a synthetic run like any other
        return {"kind": STATE_KIND, "rank": self.rank, "world_size": self.world_size, "batches": self.batches,
                "skips": {"delivered": self.batches * self.config.batch_size, "by_reason": {}, "by_shard": {}}}

    def load_state_dict(self, states: Sequence[Mapping[str, Any]]) -> None:
        if not all(isinstance(s, Mapping) and s.get("kind") == STATE_KIND for s in states):
            raise ConfigError("the checkpoint's data position is a real shard stream's, and data.synthetic=true "
                              "cannot continue it: resume without data.synthetic, or start a new run from its weights")
        self.batches = max(int(s["batches"]) for s in states)  # the same on every rank
