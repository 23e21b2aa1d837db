"""The training batches of one rank, as one stateful part: sources -> readers -> stages -> batches.

Each rank has `max(num_workers, 1)` readers (its DataLoader workers, or the main process). A reader walks every
source with its own `SourceCursor` (passes -> safe tar reading -> shuffle buffer, data/cursor.py), picks each
sample's source by weight (seeded per sample: no state), runs the sample through the registered stages
(data/stages.py), and hands over whole batches. A bad sample or broken shard on the way is a counted skip that
travels with the batch. Each batch also carries its reader's position after it, so the loader knows, for what
the training loop has consumed (not what workers prefetched), where every reader is: that is its `state_dict`.

Resume is exact when the layout (ranks x readers) is the same: every reader continues from its position, and the
workers are rotated so batches keep alternating in the same order. On a different layout the readers' unread
spans (buffered samples, the rest of the current shard, the rest of the pass, whole later passes up to the
furthest reader's) are dealt out to the new readers: the epoch in progress continues with no sample delivered
twice and none lost, in a different order.
"""

from __future__ import annotations

import itertools
import logging
import random
import signal
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from mmpretrain.data.config import DataConfig, declared_members
from mmpretrain.data.cursor import CursorState, PassPlan, ShardSpan, SourceCursor, leftover_spans
from mmpretrain.data.safe_tar import ShardFailure
from mmpretrain.data.skips import SampleSkipped, SkipBudget, SkipEvent, SkipLedger, skip_metrics, too_many_skips
from mmpretrain.data.sources import (Source, StreamInfo, batch_repeats_samples, check_shard_count,
                                     resolve_sources)
from mmpretrain.data.stages import SampleContext, Stage, StageEnv, build_stages, run_stages
from mmpretrain.errors import ConfigError, DataError

log = logging.getLogger(__name__)

STATE_FORMAT = 2  # 1: (pass, index) positions replayed on resume (before 0.2); 2: cursors that seek


def sample_seed(seed: int, *parts: int) -> int:
    """A per-sample seed from (rank, reader, source, pass, index): the augmentation of a sample does not depend
    on what was read before it."""
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part) % (2**63 - 1)
    return value


@dataclass
class ReaderState:
    """One reader's position: samples delivered (the mixing draw is seeded by it) and each source's cursor."""

    delivered: int
    sources: list[CursorState]

    def to_dict(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "sources": [s.to_dict() for s in self.sources]}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> "ReaderState":
        return cls(int(value["delivered"]), [CursorState.from_dict(s) for s in value["sources"]])


@dataclass(frozen=True)
class BatchOrigin:
    """Travels with each batch: its reader, that reader's position after it, the skips on the way to it."""

    reader: int
    state: ReaderState
    skips: tuple[SkipEvent, ...]
    samples: int


@dataclass
class ReadersStart:
    """Where the readers of this rank begin: `offset` rotates workers; `readers` is reader -> position."""

    offset: int = 0
    readers: Optional[dict[int, ReaderState]] = None

    def reader_of(self, worker: int, num_workers: int) -> int:
        return (worker + self.offset) % num_workers


class ReaderStream(IterableDataset):
    """The batches of one reader per DataLoader worker (or of the one reader in the main process), endless."""

    def __init__(self, sources: Sequence[Source], stages: Sequence[Stage], config: DataConfig, seed: int,
                 rank: int = 0, world_size: int = 1, members: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.sources = list(sources)
        self.stages = list(stages)
        self.config = config
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.read_args = (members or declared_members(config), config.allow_shell_urls, config.limits.max_member_bytes)
        self.start = ReadersStart()  # set before the loader's workers start, to resume mid-stream

    def plan(self, source: int, reader: int, num_readers: int, rank: Optional[int] = None,
             world_size: Optional[int] = None) -> PassPlan:
        return PassPlan(self.sources[source], source, self.seed, self.rank if rank is None else rank, reader,
                        num_readers, self.world_size if world_size is None else world_size, self.config.resampled)

    def cursors(self, reader: int, num_readers: int, state: Optional[ReaderState]) -> list[SourceCursor]:
        return [SourceCursor(self.plan(s, reader, num_readers), self.config.shuffle_buffer, read_args=self.read_args,
                             state=state.sources[s] if state else None) for s in range(len(self.sources))]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_readers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = self.start.reader_of(worker, num_readers)
        state = (self.start.readers or {}).get(reader)
        cursors = self.cursors(reader, num_readers, state)
        delivered = state.delivered if state else 0
        while True:
            samples, skips = [], []
            while len(samples) < self.config.batch_size:
                source = self._pick_source(reader, delivered)
                samples.append(self._next_good(source, reader, cursors[source], skips))
                delivered += 1
            batch = default_collate(samples)
            position = ReaderState(delivered, [c.snapshot() for c in cursors])
            batch["_origin"] = BatchOrigin(reader, position, tuple(skips), len(samples))
            yield batch

    def _pick_source(self, reader: int, delivered: int) -> int:
        """The source of a reader's next sample: by weight, seeded per sample (no state to save)."""
        if len(self.sources) == 1:
            return 0
        draw = random.Random(f"{self.seed}-mix-{self.rank}-{reader}-{delivered}").random()
        cumulative = itertools.accumulate(s.weight for s in self.sources)
        return next((i for i, c in enumerate(cumulative) if draw < c), len(self.sources) - 1)

    def _next_good(self, source: int, reader: int, cursor: SourceCursor, skips: list[SkipEvent]
                   ) -> dict[str, torch.Tensor]:
        """The model inputs of `source`'s next usable sample; what is skipped on the way goes into `skips`."""
        empty_passes, last_pass = 0, cursor.pass_index
        for pass_index, index, item in cursor:
            if pass_index != last_pass:
                empty_passes, last_pass = empty_passes + 1, pass_index
                if empty_passes >= 2:  # a whole pass went by without one usable sample
                    reasons = ", ".join(sorted({e.reason for e in skips}))
                    example = skips[-1].detail if skips else ""
                    raise DataError(f"data: source {self.sources[source].name!r} (rank {self.rank}, reader "
                                    f"{reader}) had no usable sample in a whole pass over its shards; skipped: "
                                    f"{reasons} (e.g. {example})")
            if isinstance(item, ShardFailure):
                skips.append(SkipEvent(item.reason, item.shard, item.lost, item.detail))
                continue
            seed = sample_seed(self.seed, self.rank, reader, source, pass_index, index)
            try:
                return run_stages(self.stages, item, SampleContext(seed, random.Random(seed)))
            except SampleSkipped as e:
                key = str(item.get("__key__", "?"))
                skips.append(SkipEvent(e.reason, item.get("__url__", "?"), 1, f"{key}: {e.detail}", key))
        raise AssertionError("a cursor is endless")


def _cause_line(message: str) -> str:
    """A worker's error as its own one-line message (torch re-raises it with "Caught ... Original Traceback")."""
    if "Original Traceback" not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if last.startswith(("mmpretrain.errors.", "DataError")) else last


def _as_is(batch: Any) -> Any:
    return batch  # the reader collates whole batches itself


def _ignore_preemption_signals(worker: int) -> None:
    """DataLoader workers leave SIGTERM and SIGUSR1 to the training process, which checkpoints and exits (its
    workers then exit with it). torchrun and SLURM signal a rank's whole process group: a worker killed by the
    signal used to take the rank down before the preemption checkpoint was written."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def _stop_workers(batches: Any) -> None:
    """Stop a DataLoader iterator's workers for good. torch's own shutdown asks them to exit and, failing that,
    sends SIGTERM, which our workers ignore (see above): whoever is still alive after the polite request gets
    SIGKILL, so neither the loader's owner nor the interpreter's exit (which joins child processes) can hang."""
    workers = list(getattr(batches, "_workers", ()))
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


def _identity_sum(counts: list[int]) -> list[int]:
    return counts


def _identity_gather(value: Any) -> list[Any]:
    return [value]


class TrainLoader:
    """The batches of one rank and their position (see module doc): `next_batch`, `skip_report`,
    `state_dict` / `load_state_dict`.

    `all_sum` and `all_gather` are the process group's collectives (summing a list of counts, gathering an
    object), given by whoever builds the loader, so data/ needs no process group of its own.
    """

    def __init__(self, config: DataConfig, env: StageEnv, seed: int, rank: int = 0, world_size: int = 1,
                 all_sum: Callable[[list[int]], list[int]] = _identity_sum,
                 all_gather: Callable[[Any], list[Any]] = _identity_gather) -> None:
        config.validate()
        sources = resolve_sources(config.train, config.sources, config.allow_shell_urls,
                                  config.allow_missing_shards)
        if not config.resampled:  # resampled readers each draw from all shards: any count feeds any number
            for source in sources:
                check_shard_count(len(source.shards), world_size, config.num_workers,
                                  source.name if len(sources) > 1 else "")
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.num_readers = max(config.num_workers, 1)
        self.info = StreamInfo(sources, config.resampled)
        for source in sources if rank == 0 else ():
            repeats = batch_repeats_samples(source, config.batch_size, world_size * self.num_readers)
            if repeats:
                log.warning(repeats)
        self.stream = ReaderStream(sources, build_stages(env), config, seed, rank, world_size,
                                   declared_members(config, env.modalities))
        self.readers: dict[int, ReaderState] = {}
        self.last_reader: Optional[int] = None  # the reader of the batch handed out last
        self.batches = 0
        self.ledger = SkipLedger()
        self.budget = SkipBudget(config.max_skip_fraction, config.skip_window)
        self._all_sum, self._all_gather = all_sum, all_gather
        self._batches: Optional[Iterator[dict[str, Any]]] = None
        self._stop: Optional[weakref.finalize] = None
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self._closed:
            raise RuntimeError("this TrainLoader is closed")
        if self._batches is None:  # workers start here, from the state loaded (or not) before
            self.stream.start = ReadersStart(self.batches % self.num_readers, dict(self.readers))
            # Its own generator: the DataLoader draws a base seed when it starts, which from the global generator
            # would shift every later draw of the stochastic layers (SpecAugment, dropout) at a resume. Our readers
            # seed every sample themselves and use no worker seed.
            loader = DataLoader(self.stream, batch_size=None, num_workers=self.config.num_workers,
                                collate_fn=_as_is, persistent_workers=self.config.num_workers > 0,
                                worker_init_fn=_ignore_preemption_signals, generator=torch.Generator())
            self._batches = iter(loader)
            # Also at interpreter exit, before multiprocessing joins the workers (it would wait forever)
            self._stop = weakref.finalize(self, _stop_workers, self._batches)
        try:
            batch = next(self._batches)
        except DataError as e:  # from a worker, torch wraps it in a traceback: keep the cause, one line
            raise DataError(_cause_line(str(e))) from None
        origin: BatchOrigin = batch.pop("_origin")
        self.readers[origin.reader] = origin.state
        self.last_reader = origin.reader
        self.ledger.record(origin.samples, origin.skips)
        self.batches += 1
        return batch

    def close(self) -> None:
        """Stop the workers (idempotent). The training run closes its loader on every way out: a normal end, an
        error, a preemption. A closed loader cannot hand out batches any more."""
        if self._stop is not None:
            self._stop()
        self._batches = None
        self._closed = True

    # -- skips -------------------------------------------------------------------------------------------------

    def skip_report(self) -> tuple[dict[str, float], Optional[DataError]]:
        """Global skip counts for the metrics log, and the error that must stop the run when the skip budget is
        exceeded (the same verdict on every rank). Collective: every rank calls it at the same step."""
        global_counts = self._all_sum(self.ledger.counts())
        fraction = self.budget.fraction(global_counts)
        report = skip_metrics(global_counts)
        if fraction is not None:
            report["data/skip_fraction"] = fraction
        if not self.budget.exceeded(fraction):
            return report, None
        gathered = self._all_gather((self.ledger.worst_shards(), dict(self.ledger.last_detail)))
        worst = sorted((pair for shards, _ in gathered for pair in shards), key=lambda p: -p[1])[:5]
        details = {k: v for _, d in gathered for k, v in d.items()}
        return report, too_many_skips(fraction, self.budget.max_fraction, self.budget.window, global_counts,
                                      worst, details)

    # -- state -------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This rank's part (a checkpoint holds every rank's, in rank order)."""
        return {"format": STATE_FORMAT, "rank": self.rank, "world_size": self.world_size,
                "num_readers": self.num_readers, "batches": self.batches,
                "readers": {str(k): v.to_dict() for k, v in self.readers.items()},
                "skips": self.ledger.state_dict()}

    def load_state_dict(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Continue from every rank's saved part: exactly when the layout is the same, else elastically."""
        if self._batches is not None:
            raise RuntimeError("load_state_dict after the first batch: the readers have already started")
        if any(isinstance(s, Mapping) and s.get("kind") == "synthetic" for s in states):  # data/synthetic.py
            raise ConfigError("the checkpoint's data position is a synthetic-data run's (data.synthetic=true), which "
                              "read no shards: a real stream cannot continue it; start a new run from its weights")
        formats = {s.get("format", 1) if isinstance(s, Mapping) else 1 for s in states}
        if formats != {STATE_FORMAT}:
            raise ConfigError(f"the checkpoint's data position is in format {sorted(formats)}, this version reads "
                              f"format {STATE_FORMAT} (cursors that seek): resume that run with the version that "
                              "wrote it, or start a new run from its weights")
        if len(states) != len({s["rank"] for s in states}) or sorted(s["rank"] for s in states) != list(
                range(len(states))):
            raise ConfigError("the checkpoint's data position does not hold one part per rank")
        same_layout = len(states) == self.world_size and all(s["num_readers"] == self.num_readers for s in states)
        saved_sources = {len(r["sources"]) for s in states for r in s["readers"].values()}
        if saved_sources - {len(self.info.sources)}:
            raise ConfigError("the checkpoint's data stream read a different number of sources than this run's "
                              f"{len(self.info.sources)}: resume needs the same data sources")
        if same_layout:
            mine = states[self.rank]
            self.readers = {int(k): ReaderState.from_dict(v) for k, v in mine["readers"].items()}
            self.batches = int(mine["batches"])
            self.ledger = SkipLedger.from_state_dict(mine["skips"])
            return
        old_ranks, old_readers = len(states), int(states[0]["num_readers"])
        if self.rank == 0:
            log.warning("resuming data from %d rank(s) x %d reader(s) onto %d x %d: the epoch in progress continues "
                        "with no sample repeated or lost, but not in the order the old layout would have read it",
                        old_ranks, old_readers, self.world_size, self.num_readers)
        self.readers = self._redeal(states)
        self.batches = 0
        # The counts of every old rank are kept once, on rank 0, so the global sums stay right.
        self.ledger = SkipLedger.merged([s["skips"] for s in states]) if self.rank == 0 else SkipLedger()

    def _redeal(self, states: Sequence[Mapping[str, Any]]) -> dict[int, ReaderState]:
        """This rank's new readers' positions: each source's unread spans of every old reader, dealt round-robin
        over the new readers (rank-major), as an extra pass before the next epoch."""
        old_world, old_readers = len(states), int(states[0]["num_readers"])
        old: list[tuple[int, int, ReaderState]] = []
        for state in states:
            for reader in range(old_readers):
                saved = state["readers"].get(str(reader))
                fresh = ReaderState(0, [CursorState() for _ in self.info.sources])
                old.append((int(state["rank"]), reader, ReaderState.from_dict(saved) if saved else fresh))
        delivered = max(r.delivered for _, _, r in old)
        slots = self.world_size * self.num_readers
        new: dict[int, ReaderState] = {r: ReaderState(delivered, []) for r in range(self.num_readers)}
        for source in range(len(self.info.sources)):
            furthest = max(r.sources[source].pass_index for _, _, r in old)
            spans: list[ShardSpan] = []
            for rank, reader, position in old:
                cursor = position.sources[source]
                plan = self.stream.plan(source, reader, old_readers, rank, old_world)
                through = cursor.pass_index if self.config.resampled else furthest
                spans.extend(leftover_spans(cursor, plan, through))
            for reader in range(self.num_readers):
                share = spans[self.rank * self.num_readers + reader::slots]
                new[reader].sources.append(CursorState(pass_index=furthest, spans=[s.to_list() for s in share]))
        return new
