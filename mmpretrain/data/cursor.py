"""One reader's resumable walk over one source: passes of shard spans -> safe tar reading -> shuffle buffer.

A pass is a list of shard spans (in epoch mode the reader's slice of one epoch's seeded shard order; resampled,
one seeded draw with replacement). Its samples go through a seeded reservoir shuffle buffer. The cursor's state
is its *position*, not its history: the pass, the span and the byte offset reached in it, the offsets of the
samples held in the buffer, and the shuffle generator's state. A resumed cursor enters the current shard at that
offset and reads the buffered samples back by offset, so resuming costs one buffer plus the rest of one shard,
wherever in the pass it stopped, and yields exactly what the uninterrupted cursor would have.

`leftover_spans` turns a saved cursor into the spans it had not yet delivered, so a run resumed onto a different
number of ranks or workers can deal them out to its new readers (data/loader.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

from mmpretrain.data.safe_tar import ShardFailure, read_samples_at, read_shard
from mmpretrain.data.shards import RawSample
from mmpretrain.data.sources import Source, assign_shards
from mmpretrain.errors import DataError

Item = Union[RawSample, ShardFailure]


@dataclass(frozen=True)
class ShardSpan:
    """A stretch of one shard to read: from the sample at byte `start` to the end, or `limit` samples.

    `skip_first`: the sample at `start` was already read (the span continues an earlier reading); `delivered`:
    samples of this shard read before the span, so a break still counts what was lost against sizes.json."""

    shard: str
    start: int = 0
    skip_first: bool = False
    delivered: int = 0
    limit: Optional[int] = None

    def to_list(self) -> list:
        return [self.shard, self.start, self.skip_first, self.delivered, self.limit]

    @classmethod
    def from_list(cls, value: Sequence) -> "ShardSpan":
        return cls(str(value[0]), int(value[1]), bool(value[2]), int(value[3]),
                   None if value[4] is None else int(value[4]))


@dataclass(frozen=True)
class PassPlan:
    """The spans of every pass of one reader over one source (a pure function of seed and reader slot)."""

    source: Source
    source_index: int
    seed: int
    rank: int
    reader: int
    num_readers: int   # per rank
    world_size: int
    resampled: bool

    def spans(self, pass_index: int) -> list[ShardSpan]:
        shards = self.source.shards
        if self.resampled:
            tag = f"{self.seed}-shards-{self.rank}-{self.reader}" + (f"-{self.source_index}" if self.source_index
                                                                     else "")
            rng = random.Random(tag)
            for _ in range(pass_index):  # a draw is cheap; the samples of earlier passes are never read
                rng.choices(shards, k=len(shards))
            return [ShardSpan(s) for s in rng.choices(shards, k=len(shards))]
        slot, slots = self.rank * self.num_readers + self.reader, self.world_size * self.num_readers
        return [ShardSpan(s) for s in assign_shards(shards, self.seed + self.source_index, pass_index, slot, slots)]

    def shuffle_tag(self, pass_index: int) -> str:
        return f"{self.seed}-{self.rank}-{self.reader}-{pass_index}" + (f"-{self.source_index}"
                                                                         if self.source_index else "")


@dataclass
class CursorState:
    """Where a cursor is (see the module doc). Plain values only: it goes into checkpoints (weights_only load)."""

    pass_index: int = 0
    spans: Optional[list[list]] = None    # this pass's spans when they are not the plan's (an elastic resume)
    span_pos: int = 0                     # the span being read
    last_offset: Optional[int] = None     # byte offset of the last sample read from that span (None: none yet)
    span_read: int = 0                    # samples read from that span
    read_in_pass: int = 0
    out_index: int = 0                    # samples the shuffle buffer has handed out in this pass
    draining: bool = False                # the pass is read; the buffer is being emptied
    buffer: list[tuple] = field(default_factory=list)  # ("s", shard, offset) or ("f", shard, reason, detail, lost)
    rng: Optional[tuple] = None           # the shuffle generator's state (None: fresh for this pass)

    def to_dict(self) -> dict[str, Any]:
        return {"pass_index": self.pass_index, "spans": self.spans, "span_pos": self.span_pos,
                "last_offset": self.last_offset, "span_read": self.span_read, "read_in_pass": self.read_in_pass,
                "out_index": self.out_index, "draining": self.draining, "buffer": [list(r) for r in self.buffer],
                "rng": self.rng}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "CursorState":
        return cls(**{**value, "buffer": [tuple(r) for r in value["buffer"]]})


def _ref(item: Item) -> tuple:
    if isinstance(item, ShardFailure):
        return ("f", item.shard, item.reason, item.detail, item.lost)
    return ("s", item["__url__"], item["__offset__"])


class SourceCursor:
    """Yields (pass, index in pass, raw sample or shard failure) for one reader and one source, forever."""

    def __init__(self, plan: PassPlan, buffer_size: int, read: Callable[..., Iterator[Item]] = read_shard,
                 fetch: Callable[..., dict[int, Item]] = read_samples_at, read_args: tuple = (),
                 state: Optional[CursorState] = None) -> None:
        self.plan = plan
        self.buffer_size = buffer_size
        self._read = read
        self._fetch = fetch
        self._read_args = read_args  # (members, allow_shell_urls, max_member_bytes)
        self.state = state or CursorState()
        self._rng = random.Random(plan.shuffle_tag(self.state.pass_index))
        if self.state.rng is not None:
            self._rng.setstate(_as_rng_state(self.state.rng))
        self._buffer: list[Item] = self._refill(self.state.buffer)
        self._drain_pos = 0
        self._spans_cache: Optional[tuple[int, list[ShardSpan]]] = None
        self._span_items: Optional[Iterator[Item]] = None

    @property
    def pass_index(self) -> int:
        return self.state.pass_index

    def snapshot(self) -> CursorState:
        """The state to save now: resuming from it yields exactly what this cursor yields next."""
        buffer = self._buffer[self._drain_pos:] if self.state.draining else self._buffer
        return replace(self.state, buffer=[_ref(i) for i in buffer], rng=self._rng.getstate())

    def __iter__(self) -> "SourceCursor":
        return self

    def __next__(self) -> tuple[int, int, Item]:
        while True:
            state = self.state  # a new pass replaces it
            if not state.draining:
                item = self._read_next()
                if item is not None:
                    state.read_in_pass += 1
                    if self.buffer_size <= 1:
                        return self._emit(item)
                    if len(self._buffer) < self.buffer_size:
                        self._buffer.append(item)
                        continue
                    index = self._rng.randrange(self.buffer_size)
                    out, self._buffer[index] = self._buffer[index], item
                    return self._emit(out)
                if state.read_in_pass == 0 and state.spans is None:
                    raise DataError(f"data: source {self.plan.source.name!r} (rank {self.plan.rank}, reader "
                                    f"{self.plan.reader}) read nothing in pass {state.pass_index} from shards "
                                    f"{[s.shard for s in self._spans()]}")
                self._rng.shuffle(self._buffer)
                state.draining, self._drain_pos = True, 0
            if self._drain_pos < len(self._buffer):
                self._drain_pos += 1
                return self._emit(self._buffer[self._drain_pos - 1])
            self._next_pass()

    def _emit(self, item: Item) -> tuple[int, int, Item]:
        index = self.state.out_index
        self.state.out_index += 1
        return self.state.pass_index, index, item

    def _spans(self) -> list[ShardSpan]:
        state = self.state
        if self._spans_cache is None or self._spans_cache[0] != state.pass_index:
            spans = ([ShardSpan.from_list(s) for s in state.spans] if state.spans is not None
                     else self.plan.spans(state.pass_index))
            self._spans_cache = (state.pass_index, spans)
        return self._spans_cache[1]

    def _read_next(self) -> Optional[Item]:
        """The next raw item of this pass's spans, or None when the pass is read."""
        state = self.state
        while True:
            spans = self._spans()
            if state.span_pos >= len(spans):
                return None
            span = spans[state.span_pos]
            if self._span_items is None:
                self._span_items = self._open(span)
            item = next(self._span_items, None)
            if item is None or isinstance(item, ShardFailure):
                self._end_span()  # a failure ends its shard: resuming must not count it again
                if item is None:
                    continue
                return item
            state.last_offset, state.span_read = item["__offset__"], state.span_read + 1
            if span.limit is not None and state.span_read >= span.limit:
                self._end_span()
            return item

    def _open(self, span: ShardSpan) -> Iterator[Item]:
        """Read `span`, or its rest when this cursor already read part of it (resumed at the last offset)."""
        resumed = self.state.last_offset is not None
        start = self.state.last_offset if resumed else span.start
        skip = resumed or span.skip_first
        members, allow_urls, max_bytes = self._read_args
        delivered = span.delivered + self.state.span_read - int(skip)
        # What a break loses: the rest of the shard by sizes.json, or of the span when it has a limit (a sample
        # handed over by an elastic resume stands for itself, not for its whole shard).
        expected = ((self.plan.source.sizes or {}).get(span.shard) if span.limit is None
                    else span.delivered + span.limit)
        items = self._read(span.shard, members, allow_urls, expected, max_bytes, start=start,
                           delivered_before=max(delivered, 0))
        if skip:
            first = next(items, None)  # the sample at `start` was read before
            if isinstance(first, ShardFailure):
                return iter([first])
        return items

    def _end_span(self) -> None:
        state = self.state
        state.span_pos, state.last_offset, state.span_read = state.span_pos + 1, None, 0
        self._span_items = None

    def _next_pass(self) -> None:
        self.state = CursorState(pass_index=self.state.pass_index + 1)
        self._rng = random.Random(self.plan.shuffle_tag(self.state.pass_index))
        self._buffer, self._drain_pos, self._span_items = [], 0, None

    def _refill(self, refs: Sequence[tuple]) -> list[Item]:
        """The buffered items of a saved state, read back by offset (grouped by shard, each shard opened once)."""
        if not refs:
            return []
        members, allow_urls, max_bytes = self._read_args
        wanted: dict[str, list[int]] = {}
        for ref in refs:
            if ref[0] == "s":
                wanted.setdefault(ref[1], []).append(int(ref[2]))
        found = {shard: self._fetch(shard, offsets, members, allow_urls, max_bytes)
                 for shard, offsets in wanted.items()}
        return [found[ref[1]][int(ref[2])] if ref[0] == "s" else ShardFailure(*ref[1:]) for ref in refs]


def _as_rng_state(value: Sequence) -> tuple:
    """random.Random state from its saved form (lists after a round trip through some serialisers)."""
    return (int(value[0]), tuple(int(v) for v in value[1]), value[2])


def leftover_spans(state: CursorState, plan: PassPlan, through_pass: int) -> list[ShardSpan]:
    """What a saved cursor had not yet delivered of its passes up to `through_pass`: its buffered samples (one
    span each), the rest of its current span, its later spans, and the whole spans of its later passes."""
    if state.pass_index > through_pass:
        return []
    spans = ([ShardSpan.from_list(s) for s in state.spans] if state.spans is not None
             else plan.spans(state.pass_index))
    left = [ShardSpan(ref[1], int(ref[2]), limit=1) for ref in state.buffer if ref[0] == "s"]
    if not state.draining and state.span_pos < len(spans):
        span = spans[state.span_pos]
        if state.last_offset is None:
            left.append(span)
        elif span.limit is None or state.span_read < span.limit:
            left.append(ShardSpan(span.shard, state.last_offset, True, span.delivered + state.span_read,
                                  None if span.limit is None else span.limit - state.span_read))
        left.extend(spans[state.span_pos + 1:])
    for later in range(state.pass_index + 1, through_pass + 1):
        left.extend(plan.spans(later))
    return left
