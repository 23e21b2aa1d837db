"""What the training stream reads: one or more shard sources, their weights, and how shards meet readers.

A source is a set of shards; several sources are mixed by weight, per sample, deterministically per seed. In
epoch mode every source runs through its own epochs (each sample once per epoch of that source, whatever the
other sources do); resampled, every reader draws shards with replacement forever. Both are stated at start, with
how much of each source the run will see, so nobody trains on a silent subset.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

import braceexpand

from mmpretrain.data.safe_tar import check_shard_spec, is_url
from mmpretrain.data.shards import expand_shards, read_shard_sizes
from mmpretrain.errors import ConfigError


@dataclass
class SourceConfig:
    """One source of a mixture: its shard specs (directory, glob or brace pattern) and its share of samples."""

    name: str = ""
    shards: list[str] = field(default_factory=list)
    weight: float = 1.0

    def validate(self, allow_shell_urls: bool, name: Optional[str] = None) -> None:
        """`name`: what errors call the source (default: its own name)."""
        name = self.name if name is None else name
        if not self.shards:
            raise ConfigError(f"data.sources: source {name!r} has no shards")
        if not self.weight > 0:
            raise ConfigError(f"data.sources: source {name!r} needs a weight > 0, got {self.weight}")
        for spec in self.shards:
            check_shard_spec(spec, allow_shell_urls)


@dataclass(frozen=True)
class Source:
    name: str
    shards: list[str]
    weight: float                      # normalised: the weights of all sources sum to 1
    sizes: Optional[dict[str, int]]    # samples per shard from sizes.json, None if any count is unknown

    @property
    def samples_per_epoch(self) -> Optional[int]:
        return None if self.sizes is None else sum(self.sizes.values())


def named_sources(train: list[str], sources: list[SourceConfig], allow_shell_urls: bool
                  ) -> list[tuple[str, SourceConfig]]:
    """`data.train` (one source, named "train") or `data.sources` (a weighted mixture), never both, each source
    checked, with the names it is reported under. Empty when neither is set (a config that only evaluates)."""
    if train and sources:
        raise ConfigError("data.train and data.sources are both set: use data.train for one source, "
                          "data.sources for a weighted mixture")
    configs = sources or ([SourceConfig(name="train", shards=train)] if train else [])
    names = [c.name or f"source{i}" for i, c in enumerate(configs)]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.sources: names must be unique, got {names}")
    for name, config in zip(names, configs):
        config.validate(allow_shell_urls, name)
    return list(zip(names, configs))


def resolve_sources(train: list[str], sources: list[SourceConfig], allow_shell_urls: bool,
                    allow_missing_shards: bool = False) -> list[Source]:
    """`data.train` (one source) or `data.sources` (a weighted mixture): exactly one of them."""
    named = named_sources(train, sources, allow_shell_urls)
    if not named:
        raise ConfigError("data.train is empty: give at least one shard directory, glob or brace pattern "
                          "(or data.sources for a mixture)")
    total = sum(config.weight for _, config in named)
    resolved = []
    for name, config in named:
        shards = [s for spec in config.shards for s in _expand(spec, allow_missing_shards)]
        resolved.append(Source(name, shards, config.weight / total, read_shard_sizes(shards)))
    return resolved


def _expand(spec: str, allow_missing: bool) -> list[str]:
    # An allowed URL spec (pipe:, http:) is a brace pattern of URLs, not files to look for on disk.
    return list(braceexpand.braceexpand(spec)) if is_url(spec) else expand_shards(spec, allow_missing)


def assign_shards(shards: list[str], seed: int, epoch: int, slot: int, slots: int) -> list[str]:
    """The shards reader `slot` of `slots` (rank-major, then worker) reads in `epoch`.

    The epoch's shard order is shuffled identically on every rank and worker (same seed and epoch), then
    dealt round-robin, so the readers' slices are disjoint and together cover every shard once.
    """
    order = list(shards)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[slot::slots]


def check_shard_count(num_shards: int, world_size: int, num_workers: int, source: str = "") -> None:
    """Fewer shards than readers leaves some reader idle forever: a known cause of hangs. Stop early instead."""
    readers = world_size * max(num_workers, 1)
    if num_shards < readers:
        where = f"source {source!r}: " if source else ""
        raise ConfigError(f"data: {where}{num_shards} shards cannot feed {world_size} ranks x {max(num_workers, 1)} "
                          f"workers = {readers} readers; write more, smaller shards, lower data.num_workers, "
                          "or set data.resampled=true")


def batch_repeats_samples(source: Source, batch_size: int, readers: int) -> Optional[str]:
    """Why one batch of a reader would hold the same sample twice, or None: a reader reads its share of an epoch
    and starts the next one, so a batch bigger than that share repeats samples within the batch (duplicate
    positives, which a contrastive loss counts as each other's negatives)."""
    count = source.samples_per_epoch
    if count is None or batch_size * readers <= count:
        return None
    return (f"data.batch_size={batch_size} is larger than the ~{count // readers} samples each of the {readers} "
            f"readers gets per epoch of source {source.name!r} ({count} samples): batches will repeat samples; "
            "use fewer workers or ranks, a smaller batch, or more data")


@dataclass(frozen=True)
class StreamInfo:
    """What the stream will read, stated at start so nobody trains on a silent subset."""

    sources: list[Source]
    resampled: bool = False

    @property
    def shards(self) -> list[str]:
        return [s for source in self.sources for s in source.shards]

    @property
    def samples_per_epoch(self) -> Optional[int]:
        counts = [s.samples_per_epoch for s in self.sources]
        return None if None in counts else sum(counts)  # type: ignore[arg-type]

    def describe(self, run_samples: Optional[int] = None) -> str:
        """One line per source: its size, weight, and (given the run's sample budget) how often it is seen."""
        lines = []
        for source in self.sources:
            count = source.samples_per_epoch
            size = "an unknown number of samples (no sizes.json)" if count is None else f"{count:,} samples"
            share = f", weight {source.weight:.0%}" if len(self.sources) > 1 else ""
            mode = ("resampled: shards drawn with replacement, no epochs" if self.resampled
                    else "epochs repeat until the step budget")
            line = f"{source.name}: {size} per epoch from {len(source.shards)} shards{share} ({mode})"
            if run_samples and count:
                line += f"; this run reads ~{run_samples * source.weight / count:.2f} epochs of it"
            lines.append(line)
        return "; ".join(lines)
