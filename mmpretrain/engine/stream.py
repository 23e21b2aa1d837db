"""The training loop's side of the data stream: batches in, positions and skip counts kept, checked and saved.

Every rank keeps its own stream position and skip ledger. At log steps the ledgers are summed over ranks (one
small all-reduce, on every rank at the same step) so the metrics log holds global counts and every rank reaches
the same verdict on the skip budget: they all stop together, with one message, instead of one rank raising while
the others wait in a collective.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Optional

import torch
import torch.distributed as dist

from mmpretrain.data.config import DataConfig
from mmpretrain.data.position import StreamPositions
from mmpretrain.data.skips import SkipBudget, SkipLedger, skip_metrics, too_many_skips
from mmpretrain.engine.dist import collective_device, multi_process


class TrainStream:
    """Wraps the loader's iterator for one rank (see module doc)."""

    def __init__(self, loader: torch.utils.data.DataLoader, config: DataConfig, rank: int, world_size: int,
                 saved: Optional[list] = None) -> None:
        readers = max(config.num_workers, 1)
        num_sources = len(loader.dataset.sources)
        state = _rank_state(saved, rank, world_size)
        self.positions = (StreamPositions.from_state_dict(state["position"], readers, num_sources)
                          if state else StreamPositions(readers))
        self.ledger = SkipLedger.from_state_dict(state.get("skips") if state else None)
        self.budget = SkipBudget(config.max_skip_fraction, config.skip_window)
        self.config = config
        self.over_budget: Optional[Exception] = None  # set by check_and_report, raised by stop_if_over_budget
        loader.dataset.start = self.positions.start()  # before iter(): the workers start from here
        self._batches: Iterator[dict[str, Any]] = iter(loader)

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch = next(self._batches)
        metas = batch.pop("_meta")
        self.positions.advance(metas)
        self.ledger.record(len(metas), (event for meta in metas for event in meta.skips))
        return batch

    def check_and_report(self) -> dict[str, float]:
        """Global skip counts for the metrics log, and the verdict on the skip budget (the same on every rank),
        which `stop_if_over_budget` acts on once the counts are logged. A collective: every rank calls it at the
        same step."""
        counts = torch.tensor(self.ledger.counts(), dtype=torch.float64)
        if multi_process():
            counts = counts.to(collective_device())
            dist.all_reduce(counts)
        global_counts = [int(c) for c in counts.tolist()]
        fraction = self.budget.fraction(global_counts)
        report = skip_metrics(global_counts)
        if fraction is not None:
            report["data/skip_fraction"] = fraction
        if self.budget.exceeded(fraction):
            worst, details = self._worst_everywhere()
            self.over_budget = too_many_skips(fraction, self.budget.max_fraction, self.budget.window,
                                              global_counts, worst, details)
        return report

    def stop_if_over_budget(self) -> None:
        if self.over_budget is not None:
            raise self.over_budget

    def _worst_everywhere(self) -> tuple[list[tuple[str, int]], dict[str, str]]:
        local = (self.ledger.worst_shards(), dict(self.ledger.last_detail))
        gathered = [local]
        if multi_process():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
        worst = sorted((pair for shards, _ in gathered for pair in shards), key=lambda p: -p[1])[:5]
        details = {k: v for _, d in gathered for k, v in d.items()}
        return worst, details

    def state_for_checkpoint(self) -> list[dict[str, Any]]:
        """Every rank's position and ledger, in rank order (a collective: every rank calls it at the same step)."""
        state = {"position": self.positions.state_dict(), "skips": self.ledger.state_dict()}
        if not multi_process():
            return [state]
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, state)
        return gathered


def _rank_state(saved: Optional[list], rank: int, world_size: int) -> Optional[Mapping[str, Any]]:
    if not saved:
        return None
    if len(saved) != world_size:
        raise ValueError(f"the checkpoint's data stream ran on {len(saved)} ranks, this run has {world_size}: "
                         "exact resume needs the same number of ranks")
    return saved[rank]
