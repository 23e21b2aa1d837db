"""The training data section of the run config: which shards, how they are mixed, shuffled, augmented and
batched, and what is skipped. Validated here, beside the fields it checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mmpretrain.audio.decode import AUDIO_EXTENSIONS
from mmpretrain.data.augment import AugmentConfig
from mmpretrain.data.skips import SampleLimits
from mmpretrain.data.sources import SourceConfig, named_sources
from mmpretrain.data.decode import IMAGE_EXTENSIONS, TEXT_EXTENSIONS
from mmpretrain.data.online_negatives import OnlineNegativesConfig
from mmpretrain.errors import ConfigError, require


@dataclass
class DataConfig:
    """Training data: which shards, how they are mixed, shuffled, augmented and batched, what is skipped."""

    train: list[str] = field(default_factory=list)  # one source: shard specs (dir, glob, brace), concatenated
    sources: list[SourceConfig] = field(default_factory=list)  # or several, mixed by weight (not both)
    batch_size: int = 128                            # per rank
    num_workers: int = 2                             # DataLoader worker processes per rank
    shuffle_buffer: int = 2000                       # samples held for shuffling, per worker and source
    positives_per_sample: int = 1                    # >1: that many captions per sample, all positives
    negatives_per_sample: int = 0                    # >0: hard-negative captions per sample (k), from .neg.json
    #                                                  or, when online_negatives.types is set, generated
    online_negatives: OnlineNegativesConfig = field(default_factory=OnlineNegativesConfig)
    resampled: bool = False                          # draw shards with replacement forever, per reader (no epochs)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    limits: SampleLimits = field(default_factory=SampleLimits)
    max_skip_fraction: float = 0.05                  # stop when more of a window of samples was skipped
    skip_window: int = 10_000                        # samples (all ranks) the skipped fraction is judged over
    allow_shell_urls: bool = False                   # let webdataset open pipe:/http:/s3: specs (runs commands)
    allow_missing_shards: bool = False               # a brace pattern naming absent shards: warn, read the rest
    stages: list[str] = field(default_factory=list)  # per-sample stages by registered name (data/stages.py);
    #                                                  empty: the default for the model's towers (+ negatives)
    optional: list[str] = field(default_factory=list)  # modalities a sample may lack (then masked out of the
    #                                                  pairs that need them); any other missing member is a skip
    synthetic: bool = False                          # throughput work: no shards are read, every step gets the
    #                                                  same pre-built random batch on the device (data/synthetic.py),
    #                                                  so samples/s is the model-only ceiling; not learnable data

    def validate(self) -> None:
        """Every rule of this section and its nested ones. An empty data.train passes: a config may only evaluate
        (the training stream refuses it), or train on synthetic batches (data.synthetic, which reads no shards;
        shards given with it are ignored, with a warning when the loader is built)."""
        require(self.batch_size >= 1, "data.batch_size", self.batch_size, ">= 1")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0")
        require(self.shuffle_buffer >= 0, "data.shuffle_buffer", self.shuffle_buffer, ">= 0 (0 or 1: no shuffling)")
        require(self.positives_per_sample >= 1, "data.positives_per_sample", self.positives_per_sample, ">= 1")
        require(self.negatives_per_sample >= 0, "data.negatives_per_sample", self.negatives_per_sample, ">= 0")
        if not 0 <= self.max_skip_fraction <= 1:
            raise ConfigError(f"data.max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")
        if self.skip_window < 1:
            raise ConfigError(f"data.skip_window must be >= 1, got {self.skip_window}")
        self.online_negatives.validate(self.negatives_per_sample)
        self.augment.validate()
        self.limits.validate()
        named_sources(self.train, self.sources, self.allow_shell_urls)
        unknown = [m for m in self.optional if m not in MODALITY_MEMBERS]
        if unknown:
            raise ConfigError(f"data.optional: unknown modalities {unknown}; known: {list(MODALITY_MEMBERS)}")


MODALITY_MEMBERS = {"image": IMAGE_EXTENSIONS, "text": TEXT_EXTENSIONS, "audio": AUDIO_EXTENSIONS}


def declared_members(config: DataConfig, modalities: Sequence[str] = ("image", "text")) -> frozenset[str]:
    """The only members of a sample that are kept and decoded in training: those of the model's modalities."""
    reads_negatives = config.negatives_per_sample > 0 and not config.online_negatives.enabled
    extra = ("neg.json",) if reads_negatives else ()
    return frozenset(ext for m in modalities for ext in MODALITY_MEMBERS[m]) | frozenset(extra)
