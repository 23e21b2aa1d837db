"""The training data section of the run config: which shards, how they are mixed, shuffled, augmented and
batched, and what is skipped. Validated here, beside the fields it checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmpretrain.data.augment import AugmentConfig
from mmpretrain.data.skips import SampleLimits
from mmpretrain.data.sources import SourceConfig
from mmpretrain.data.decode import IMAGE_EXTENSIONS, TEXT_EXTENSIONS
from mmpretrain.errors import ConfigError


@dataclass
class DataConfig:
    """Training data: which shards, how they are mixed, shuffled, augmented and batched, what is skipped."""

    train: list[str] = field(default_factory=list)  # one source: shard specs (dir, glob, brace), concatenated
    sources: list[SourceConfig] = field(default_factory=list)  # or several, mixed by weight (not both)
    batch_size: int = 128                            # per rank
    num_workers: int = 2                             # DataLoader worker processes per rank
    shuffle_buffer: int = 2000                       # samples held for shuffling, per worker and source
    positives_per_sample: int = 1                    # >1: that many captions per sample, all positives
    negatives_per_sample: int = 0                    # >0: hard-negative captions per sample from .neg.json
    resampled: bool = False                          # draw shards with replacement forever, per reader (no epochs)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    limits: SampleLimits = field(default_factory=SampleLimits)
    max_skip_fraction: float = 0.05                  # stop when more of a window of samples was skipped
    skip_window: int = 10_000                        # samples (all ranks) the skipped fraction is judged over
    allow_shell_urls: bool = False                   # let webdataset open pipe:/http:/s3: specs (runs commands)
    stages: list[str] = field(default_factory=list)  # per-sample stages by registered name (data/stages.py);
    #                                                  empty: the image-text default (+ negatives when asked)


def declared_members(config: DataConfig) -> frozenset[str]:
    """The only members of a sample that are kept and decoded in training."""
    extra = ("neg.json",) if config.negatives_per_sample > 0 else ()
    return frozenset(IMAGE_EXTENSIONS + TEXT_EXTENSIONS + extra)


def check_data_config(config: DataConfig) -> None:
    if not 0 <= config.max_skip_fraction <= 1:
        raise ConfigError(f"data.max_skip_fraction must be in [0, 1], got {config.max_skip_fraction}")
    if config.skip_window < 1:
        raise ConfigError(f"data.skip_window must be >= 1, got {config.skip_window}")
    limits = config.limits
    if min(limits.max_member_bytes, limits.max_pixels, limits.min_side) < 1 or limits.max_aspect_ratio < 1:
        raise ConfigError(f"data.limits: max_member_bytes, max_pixels and min_side must be >= 1 and "
                          f"max_aspect_ratio >= 1, got {limits}")
