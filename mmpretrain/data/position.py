"""The data stream's position, so a resumed run continues with exactly the samples that were next.

Every reader (rank, DataLoader worker) produces a deterministic stream: per pass (epoch, or resampled draw) a
seeded shard list and a seeded shuffle, and per sample a seed for augmentation and caption choice. So a position
is just (pass, index) per reader: on resume the reader replays its current pass up to `index` reading raw tar
members without decoding them. Each sample carries its reader and position through the batch; the training
loop strips them off and keeps the last consumed one per reader. Batches alternate between workers in order
(batch i comes from worker i mod W), so on resume the workers are rotated to keep that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

POSITION_KEYS = ("_reader", "_pass", "_index")


def sample_seed(seed: int, rank: int, reader: int, pass_index: int, index: int) -> int:
    """A per-sample seed: the augmentation of a sample does not depend on what was read before it."""
    value = seed
    for part in (rank, reader, pass_index, index):
        value = (value * 1_000_003 + part) % (2**63 - 1)
    return value


@dataclass
class StreamStart:
    """Where each reader of one rank resumes: `offset` rotates workers; `next` is reader -> (pass, index)."""

    offset: int = 0
    next: dict[int, tuple[int, int]] = field(default_factory=dict)

    def reader_of(self, worker: int, num_workers: int) -> int:
        return (worker + self.offset) % num_workers


@dataclass
class StreamPositions:
    """Tracks, in the training loop, the batches consumed and the next sample of every reader of this rank."""

    num_readers: int
    batches: int = 0
    next: dict[int, tuple[int, int]] = field(default_factory=dict)

    def consume(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Record the batch's position; return the batch without the position entries."""
        reader, passes, indices = (batch.pop(key) for key in POSITION_KEYS)
        self.next[int(reader[-1])] = (int(passes[-1]), int(indices[-1]) + 1)
        self.batches += 1
        return batch

    def start(self) -> StreamStart:
        return StreamStart(offset=self.batches % self.num_readers, next=dict(self.next))

    def state_dict(self) -> dict[str, Any]:
        return {"num_readers": self.num_readers, "batches": self.batches,
                "next": {str(k): list(v) for k, v in self.next.items()}}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], num_readers: int) -> "StreamPositions":
        if state["num_readers"] != num_readers:
            raise ValueError(f"the checkpoint's data stream had {state['num_readers']} readers per rank, this run "
                             f"has {num_readers}: exact resume needs the same data.num_workers")
        return cls(num_readers, int(state["batches"]), {int(k): (v[0], v[1]) for k, v in state["next"].items()})
