"""The data stream's position, so a resumed run continues with exactly the samples that were next.

Every reader (rank, DataLoader worker) produces a deterministic stream: per source and pass (epoch, or resampled
draw) a seeded shard list and a seeded shuffle; per delivered sample a seeded choice of source; per sample a seed
for augmentation and caption choice. So a reader's position is the number of samples it delivered plus, per
source, (pass, index of the next raw sample): on resume each source replays its current pass up to that index
reading raw tar members without decoding them. Each sample carries its reader's position through the batch; the
training loop keeps the last one per reader. Batches alternate between workers in order (batch i comes from
worker i mod W), so on resume the workers are rotated to keep that order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmpretrain.data.skips import SkipEvent


def sample_seed(seed: int, *parts: int) -> int:
    """A per-sample seed from (rank, reader, source, pass, index): the augmentation of a sample does not depend
    on what was read before it."""
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part) % (2**63 - 1)
    return value


@dataclass(frozen=True)
class ReaderPosition:
    """Samples delivered by one reader, and per source the (pass, next raw index) it has reached."""

    delivered: int
    sources: tuple[tuple[int, int], ...]

    @classmethod
    def start(cls, num_sources: int) -> "ReaderPosition":
        return cls(0, ((0, 0),) * num_sources)

    def to_list(self) -> list:
        return [self.delivered, [list(s) for s in self.sources]]

    @classmethod
    def from_list(cls, value: Sequence) -> "ReaderPosition":
        return cls(int(value[0]), tuple((int(p), int(i)) for p, i in value[1]))


@dataclass(frozen=True)
class SampleMeta:
    """Travels with each sample: its reader, the reader's position after it, and the skips just before it."""

    reader: int
    position: ReaderPosition
    skips: tuple[SkipEvent, ...] = ()


@dataclass
class StreamStart:
    """Where each reader of one rank resumes: `offset` rotates workers; `next` is reader -> position."""

    offset: int = 0
    next: dict[int, ReaderPosition] = field(default_factory=dict)

    def reader_of(self, worker: int, num_workers: int) -> int:
        return (worker + self.offset) % num_workers


@dataclass
class StreamPositions:
    """Tracks, in the training loop, the batches consumed and the next sample of every reader of this rank."""

    num_readers: int
    batches: int = 0
    next: dict[int, ReaderPosition] = field(default_factory=dict)

    def advance(self, metas: Sequence[SampleMeta]) -> None:
        """Record a consumed batch (all of one reader: a DataLoader worker builds whole batches)."""
        self.next[metas[-1].reader] = metas[-1].position
        self.batches += 1

    def start(self) -> StreamStart:
        return StreamStart(offset=self.batches % self.num_readers, next=dict(self.next))

    def state_dict(self) -> dict[str, Any]:
        return {"num_readers": self.num_readers, "batches": self.batches,
                "next": {str(k): v.to_list() for k, v in self.next.items()}}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], num_readers: int, num_sources: int) -> "StreamPositions":
        if state["num_readers"] != num_readers:
            raise ValueError(f"the checkpoint's data stream had {state['num_readers']} readers per rank, this run "
                             f"has {num_readers}: exact resume needs the same data.num_workers")
        positions = {int(k): ReaderPosition.from_list(v) for k, v in state["next"].items()}
        if any(len(p.sources) != num_sources for p in positions.values()):
            raise ValueError(f"the checkpoint's data stream read a different number of sources than this run's "
                             f"{num_sources}: exact resume needs the same data sources")
        return cls(num_readers, int(state["batches"]), positions)
