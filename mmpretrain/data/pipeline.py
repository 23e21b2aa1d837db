"""Config -> stages -> loader: the streaming training pipeline over WebDataset shards.

The stream is an endless run of epochs. In each epoch every rank and every DataLoader worker reads its own
disjoint slice of the (seeded, per-epoch shuffled) shard list, so no sample is read twice in an epoch and
nothing depends on a global `args`.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmpretrain.data.position import StreamStart, sample_seed
from mmpretrain.data.shards import expand_shards, iter_samples, read_sizes
from mmpretrain.data.stages import decode_sample, shuffle, to_model_inputs
from mmpretrain.errors import ConfigError
from mmpretrain.models.towers import ImageTransform, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Training data: which shards, how they are shuffled and batched."""

    train: list[str] = field(default_factory=list)  # shard specs (dir, glob or brace pattern); concatenated
    batch_size: int = 128                            # per rank
    num_workers: int = 2                             # DataLoader worker processes per rank
    shuffle_buffer: int = 2000                       # samples held for shuffling, per worker
    positives_per_sample: int = 1                    # >1: that many captions per sample, all positives
    negatives_per_sample: int = 0                    # >0: hard-negative captions per sample from .neg.json
    resampled: bool = False                          # draw shards with replacement forever, per reader (no epochs)


@dataclass(frozen=True)
class StreamInfo:
    """What the stream will read, stated at start so nobody trains on a silent subset."""

    shards: list[str]
    samples_per_epoch: int | None
    resampled: bool = False

    def describe(self) -> str:
        count = "unknown number of" if self.samples_per_epoch is None else f"{self.samples_per_epoch:,}"
        if self.resampled:
            return (f"resampled: every reader draws shards with replacement from {len(self.shards)} shards "
                    f"({count} samples in all), no epochs")
        return f"{count} samples per epoch from {len(self.shards)} shards (epochs repeat until the step budget)"


def assign_shards(shards: list[str], seed: int, epoch: int, slot: int, slots: int) -> list[str]:
    """The shards reader `slot` of `slots` (rank-major, then worker) reads in `epoch`.

    The epoch's shard order is shuffled identically on every rank and worker (same seed and epoch), then
    dealt round-robin, so the readers' slices are disjoint and together cover every shard once.
    """
    order = list(shards)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[slot::slots]


class ShardStream(IterableDataset):
    """An endless, seeded stream of model-ready samples over shards, split across ranks and workers."""

    def __init__(self, shards: list[str], image_transform: ImageTransform, tokenizer: Tokenizer,
                 config: DataConfig, seed: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.shards = shards
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.config = config
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = StreamStart()  # set before the loader's workers start to resume mid-stream

    def _passes(self, worker: int, num_workers: int) -> Iterator[list[str]]:
        """This reader's shard lists, one per pass: in epoch mode its disjoint slice of each epoch; resampled,
        as many draws with replacement as there are shards, from a stream seeded by seed, rank and worker."""
        if self.config.resampled:
            rng = random.Random(f"{self.seed}-shards-{self.rank}-{worker}")
            while True:
                yield rng.choices(self.shards, k=len(self.shards))
        slot, slots = self.rank * num_workers + worker, self.world_size * num_workers
        for epoch in itertools.count():
            yield assign_shards(self.shards, self.seed, epoch, slot, slots)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = self.start.reader_of(worker, num_workers)
        start_pass, skip = self.start.next.get(reader, (0, 0))
        for pass_index, shards in enumerate(self._passes(reader, num_workers)):
            if pass_index < start_pass:
                continue  # a pass's shard list is cheap to compute; its samples are never read
            rng = random.Random(f"{self.seed}-{self.rank}-{reader}-{pass_index}")
            # Skip (and log) unreadable samples rather than kill the run; issue-level accounting comes later.
            raw = iter_samples(shards, handler=wds.warn_and_continue)
            read = 0
            # The buffer holds raw members: replaying to a resume position reads tars but decodes nothing.
            for index, raw_sample in enumerate(shuffle(raw, self.config.shuffle_buffer, rng)):
                read += 1
                if pass_index == start_pass and index < skip:
                    continue
                seed = sample_seed(self.seed, self.rank, reader, pass_index, index)
                inputs: dict[str, Any] = to_model_inputs(
                    decode_sample(raw_sample), self.image_transform, self.tokenizer, seed,
                    self.config.positives_per_sample, self.config.negatives_per_sample)
                yield {**inputs, "_reader": reader, "_pass": pass_index, "_index": index}
            if read == 0:
                raise RuntimeError(f"rank {self.rank} reader {reader} read no samples from shards {shards}")


def check_shard_count(num_shards: int, world_size: int, num_workers: int) -> None:
    """Fewer shards than readers leaves some reader idle forever: a known cause of hangs. Stop early instead."""
    readers = world_size * max(num_workers, 1)
    if num_shards < readers:
        raise ConfigError(f"data: {num_shards} shards cannot feed {world_size} ranks x {max(num_workers, 1)} workers = "
                         f"{readers} readers; write more, smaller shards or lower data.num_workers")


def build_train_loader(config: DataConfig, image_transform: ImageTransform, tokenizer: Tokenizer, seed: int,
                       rank: int = 0, world_size: int = 1) -> tuple[DataLoader, StreamInfo]:
    """The training DataLoader (endless) and a description of what it reads."""
    if not config.train:
        raise ConfigError("data.train is empty: give at least one shard directory, glob or brace pattern")
    shards = [shard for spec in config.train for shard in expand_shards(spec)]
    if not config.resampled:  # resampled readers each draw from all shards: any count feeds any number
        check_shard_count(len(shards), world_size, config.num_workers)
    info = StreamInfo(shards=shards, samples_per_epoch=read_sizes(shards), resampled=config.resampled)
    stream = ShardStream(shards, image_transform, tokenizer, config, seed, rank, world_size)
    loader = DataLoader(stream, batch_size=config.batch_size, num_workers=config.num_workers,
                        persistent_workers=config.num_workers > 0, drop_last=True)
    return loader, info
