"""Config -> sources -> stages -> loader: the streaming training pipeline over WebDataset shards.

The stream is endless. Each rank and each DataLoader worker (a reader) reads its own disjoint slice of every
source's (seeded, per-epoch shuffled) shard list, or draws shards with replacement when resampled. A reader
picks the source of each sample by weight, then takes that source's next good sample: bad samples and broken
shards on the way are skipped and travel, counted, with the sample that follows them (see data/skips.py).
Nothing depends on a global `args`.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any, Union

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from mmpretrain.data.config import DataConfig, check_data_config, declared_members
from mmpretrain.data.position import ReaderPosition, SampleMeta, StreamStart, sample_seed
from mmpretrain.data.skips import SampleSkipped, SkipEvent
from mmpretrain.data.safe_tar import ShardFailure, read_shards
from mmpretrain.data.shards import RawSample
from mmpretrain.data.sources import (Source, StreamInfo, assign_shards, check_shard_count,
                                     resolve_sources)
from mmpretrain.data.stages import decode_sample, shuffle, to_model_inputs
from mmpretrain.errors import DataError
from mmpretrain.models.towers import ImageTransform, Tokenizer

log = logging.getLogger(__name__)

__all__ = ["DataConfig", "ShardStream", "StreamInfo", "assign_shards", "build_train_loader", "check_shard_count"]


class ShardStream(IterableDataset):
    """An endless, seeded stream of model-ready samples over weighted sources, split across ranks and workers."""

    def __init__(self, sources: Sequence[Source], image_transform: ImageTransform, tokenizer: Tokenizer,
                 config: DataConfig, seed: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.sources = list(sources)
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.config = config
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.members = declared_members(config)
        self.start = StreamStart()  # set before the loader's workers start to resume mid-stream

    def _passes(self, source: int, reader: int, num_workers: int) -> Iterator[list[str]]:
        """A reader's shard lists for one source, one per pass: in epoch mode its disjoint slice of each epoch;
        resampled, as many draws with replacement as there are shards, seeded by seed, source, rank and reader."""
        shards = self.sources[source].shards
        if self.config.resampled:
            tag = f"{self.seed}-shards-{self.rank}-{reader}" + (f"-{source}" if source else "")
            rng = random.Random(tag)
            while True:
                yield rng.choices(shards, k=len(shards))
        slot, slots = self.rank * num_workers + reader, self.world_size * num_workers
        for epoch in itertools.count():
            yield assign_shards(shards, self.seed + source, epoch, slot, slots)

    def _raw_items(self, source: int, reader: int, num_workers: int, start: tuple[int, int]
                   ) -> Iterator[tuple[int, int, Union[RawSample, ShardFailure]]]:
        """(pass, index, raw sample or shard failure) of one source, from position `start` on."""
        start_pass, skip = start
        for pass_index, shards in enumerate(self._passes(source, reader, num_workers)):
            if pass_index < start_pass:
                continue  # a pass's shard list is cheap to compute; its samples are never read
            rng = random.Random(f"{self.seed}-{self.rank}-{reader}-{pass_index}" + (f"-{source}" if source else ""))
            raw = read_shards(shards, self.members, self.config.allow_shell_urls, self.sources[source].sizes,
                              self.config.limits.max_member_bytes)
            read = 0
            # The buffer holds raw members: replaying to a resume position reads tars but decodes nothing.
            for index, item in enumerate(shuffle(raw, self.config.shuffle_buffer, rng)):
                read += 1
                if pass_index == start_pass and index < skip:
                    continue
                yield pass_index, index, item
            if read == 0:
                raise DataError(f"rank {self.rank} reader {reader} read nothing from shards {shards}")

    def _pick_source(self, reader: int, delivered: int) -> int:
        """The source of a reader's next sample: by weight, seeded per sample (no state to save)."""
        if len(self.sources) == 1:
            return 0
        draw = random.Random(f"{self.seed}-mix-{self.rank}-{reader}-{delivered}").random()
        cumulative = itertools.accumulate(s.weight for s in self.sources)
        return next((i for i, c in enumerate(cumulative) if draw < c), len(self.sources) - 1)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = self.start.reader_of(worker, num_workers)
        position = self.start.next.get(reader, ReaderPosition.start(len(self.sources)))
        reached = list(position.sources)
        streams = [self._raw_items(s, reader, num_workers, reached[s]) for s in range(len(self.sources))]
        delivered, skipped = position.delivered, []
        while True:
            source = self._pick_source(reader, delivered)
            inputs = self._next_good(source, reader, streams[source], reached, skipped)
            delivered += 1
            meta = SampleMeta(reader, ReaderPosition(delivered, tuple(reached)), tuple(skipped))
            skipped = []
            yield {**inputs, "_meta": meta}

    def _next_good(self, source: int, reader: int, stream: Iterator, reached: list[tuple[int, int]],
                   skipped: list[SkipEvent]) -> dict[str, torch.Tensor]:
        """The model inputs of `source`'s next usable sample; what is skipped on the way goes into `skipped`."""
        empty_passes, last_pass = 0, reached[source][0]
        for pass_index, index, item in stream:
            reached[source] = (pass_index, index + 1)
            if pass_index != last_pass:
                empty_passes, last_pass = empty_passes + 1, pass_index
                if empty_passes >= 2:  # a whole pass went by without one usable sample
                    reasons = ", ".join(sorted({e.reason for e in skipped}))
                    example = skipped[-1].detail if skipped else ""
                    raise DataError(f"data: source {self.sources[source].name!r} (rank {self.rank}, reader "
                                    f"{reader}) had no usable sample in a whole pass over its shards; skipped: "
                                    f"{reasons} (e.g. {example})")
            if isinstance(item, ShardFailure):
                skipped.append(SkipEvent(item.reason, item.shard, item.lost, item.detail))
                continue
            try:
                sample = decode_sample(item, self.config.limits, load=False)
                seed = sample_seed(self.seed, self.rank, reader, source, pass_index, index)
                return to_model_inputs(sample, self.image_transform, self.tokenizer, seed,
                                       self.config.positives_per_sample, self.config.negatives_per_sample)
            except SampleSkipped as e:
                key = str(item.get("__key__", "?"))
                skipped.append(SkipEvent(e.reason, item.get("__url__", "?"), 1, f"{key}: {e.detail}", key))
        raise AssertionError("a source's raw stream is endless")


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """default_collate for the tensors; the samples' SampleMeta stay a list under `_meta`."""
    metas = [sample.pop("_meta") for sample in samples]
    batch = default_collate(samples)
    batch["_meta"] = metas
    return batch


def build_train_loader(config: DataConfig, image_transform: ImageTransform, tokenizer: Tokenizer, seed: int,
                       rank: int = 0, world_size: int = 1) -> tuple[DataLoader, StreamInfo]:
    """The training DataLoader (endless) and a description of what it reads."""
    check_data_config(config)
    sources = resolve_sources(config.train, config.sources, config.allow_shell_urls)
    if not config.resampled:  # resampled readers each draw from all shards: any count feeds any number
        for source in sources:
            check_shard_count(len(source.shards), world_size, config.num_workers,
                              source.name if len(sources) > 1 else "")
    stream = ShardStream(sources, image_transform, tokenizer, config, seed, rank, world_size)
    loader = DataLoader(stream, batch_size=config.batch_size, num_workers=config.num_workers, collate_fn=collate,
                        persistent_workers=config.num_workers > 0, drop_last=True)
    return loader, StreamInfo(sources, config.resampled)
