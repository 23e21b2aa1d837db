"""Bad samples: why one is skipped, the limits that decide it, and the per-rank ledger of skips.

Web pairs are dirty, so a bad sample (or a broken shard) is a counted skip, never a crash. Each skip has one
reason from `SKIP_REASONS`; the training loop sums the ledgers of all ranks at every log step, writes the counts
to the metrics log, and stops the run when more than `max_skip_fraction` of a window of samples was skipped,
naming the shards that lost most.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from mmpretrain.errors import ConfigError, DataError

SKIP_REASONS = (
    "member_too_large",   # a declared member over data.limits.max_member_bytes (never read into memory)
    "image_missing",      # no jpg/jpeg/png/webp member
    "image_unreadable",   # zero bytes, not an image, truncated or corrupt image data
    "image_too_large",    # more pixels than data.limits.max_pixels (a decompression bomb), judged from the header
    "image_too_small",    # shorter side below data.limits.min_side (1x1 tracking pixels)
    "aspect_ratio",       # longer / shorter side above data.limits.max_aspect_ratio
    "audio_missing",      # no audio member (flac/wav/mp3/ogg)
    "audio_unreadable",   # zero bytes, not a format libsndfile reads, corrupt or truncated, non-finite samples
    "audio_too_long",     # longer than model.audio.max_seconds, judged from the header before decoding
    "audio_silent",       # peak amplitude below model.audio.silence_threshold (nothing to hear)
    "caption_missing",    # no .txt member
    "caption_empty",      # .txt holds only whitespace
    "caption_not_utf8",   # .txt is not UTF-8
    "negatives_invalid",  # .neg.json missing (when negatives are asked for), not JSON, or not a list of strings
    "negatives_unavailable",  # online negatives: no configured type applies to the sample's captions
    "label_invalid",      # evaluation only: no label, an unreadable one, or not one of the task's classes
    "shard_unreadable",   # the shard cannot be opened or is not a tar: all its samples are lost
    "shard_truncated",    # the tar breaks partway (truncated member, bad header): the rest of it is lost
)


@dataclass
class SampleLimits:
    """What an acceptable image looks like; anything else is skipped and counted."""

    max_member_bytes: int = 64 * 2**20  # a declared tar member's size, from its header: bigger is never read
    max_pixels: int = 50_000_000       # width x height, read from the header before any pixel is decoded
    min_side: int = 8                  # shorter side, in pixels
    max_aspect_ratio: float = 10.0     # longer side / shorter side

    def validate(self) -> None:
        if min(self.max_member_bytes, self.max_pixels, self.min_side) < 1 or self.max_aspect_ratio < 1:
            raise ConfigError(f"data.limits: max_member_bytes, max_pixels and min_side must be >= 1 and "
                              f"max_aspect_ratio >= 1, got {self}")


class SampleSkipped(ValueError):
    """A sample that is not used, with the reason it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SkipEvent:
    """`count` samples of `shard` skipped for `reason` (a broken shard loses many at once); `key` names the
    sample (empty for a shard failure)."""

    reason: str
    shard: str
    count: int
    detail: str = ""
    key: str = ""


def check_image_size(width: int, height: int, limits: SampleLimits) -> None:
    """Raise SampleSkipped when an image's header size is outside the limits."""
    if width * height > limits.max_pixels:
        raise SampleSkipped("image_too_large", f"{width}x{height} is over {limits.max_pixels:,} pixels")
    short, long = sorted((width, height))
    if short < limits.min_side:
        raise SampleSkipped("image_too_small", f"{width}x{height} has a side under {limits.min_side}px")
    if long / short > limits.max_aspect_ratio:
        raise SampleSkipped("aspect_ratio", f"{width}x{height} is over {limits.max_aspect_ratio}:1")


@dataclass
class SkipLedger:
    """One rank's skip counts: totals by reason, and by shard (to name the worst), plus samples delivered."""

    delivered: int = 0
    by_reason: collections.Counter = field(default_factory=collections.Counter)
    by_shard: collections.Counter = field(default_factory=collections.Counter)
    last_detail: dict[str, str] = field(default_factory=dict)

    def record(self, delivered: int, events: Iterable[SkipEvent]) -> None:
        self.delivered += delivered
        for event in events:
            self.by_reason[event.reason] += event.count
            self.by_shard[event.shard] += event.count
            if event.detail:
                self.last_detail[event.reason] = event.detail

    def counts(self) -> list[int]:
        """[delivered, one count per SKIP_REASONS entry]: the vector the ranks sum."""
        return [self.delivered] + [self.by_reason[r] for r in SKIP_REASONS]

    def worst_shards(self, k: int = 5) -> list[tuple[str, int]]:
        return self.by_shard.most_common(k)

    def state_dict(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "by_reason": dict(self.by_reason), "by_shard": dict(self.by_shard)}

    @classmethod
    def from_state_dict(cls, state: Optional[Mapping[str, Any]]) -> "SkipLedger":
        if not state:
            return cls()
        return cls(int(state["delivered"]), collections.Counter(state["by_reason"]),
                   collections.Counter(state["by_shard"]))

    @classmethod
    def merged(cls, states: Iterable[Optional[Mapping[str, Any]]]) -> "SkipLedger":
        """One ledger holding the counts of several (the ranks of a run resumed on fewer or more)."""
        total = cls()
        for ledger in map(cls.from_state_dict, states):
            total.delivered += ledger.delivered
            total.by_reason.update(ledger.by_reason)
            total.by_shard.update(ledger.by_shard)
        return total


def skip_metrics(global_counts: Sequence[int]) -> dict[str, float]:
    """The metrics-log entries for summed ledger counts: every reason seen so far, and the total."""
    skipped = dict(zip(SKIP_REASONS, global_counts[1:]))
    metrics: dict[str, float] = {f"data/skipped/{r}": float(n) for r, n in skipped.items() if n}
    metrics["data/skipped"] = float(sum(skipped.values()))
    return metrics


@dataclass
class SkipBudget:
    """Stops the run when more than `max_fraction` of the last `window` samples (all ranks) were skipped.

    Fed the global counts at each log step; the window is the span back to the newest snapshot that is at least
    `window` samples old, so the fraction is judged over no fewer than `window` samples.
    """

    max_fraction: float
    window: int
    # (delivered, skipped) at past log steps, from the start of the run (a resumed run's window may reach back
    # into the run before it: its counts are restored from the checkpoint)
    snapshots: collections.deque = field(default_factory=lambda: collections.deque([(0, 0)]))

    def fraction(self, global_counts: Sequence[int]) -> Optional[float]:
        """The skipped fraction over the current window, or None while fewer than `window` samples were read."""
        now = (global_counts[0], sum(global_counts[1:]))
        self.snapshots.append(now)
        while len(self.snapshots) > 1 and sum(now) - sum(self.snapshots[1]) >= self.window:
            self.snapshots.popleft()
        delivered, skipped = now[0] - self.snapshots[0][0], now[1] - self.snapshots[0][1]
        if delivered + skipped < self.window or delivered + skipped == 0:
            return None
        return skipped / (delivered + skipped)

    def exceeded(self, fraction: Optional[float]) -> bool:
        return fraction is not None and fraction > self.max_fraction


def too_many_skips(fraction: float, limit: float, window: int, global_counts: Sequence[int],
                   worst: Sequence[tuple[str, int]], details: Mapping[str, str]) -> DataError:
    """The error that stops the run: how much was skipped, why, and where."""
    reasons = sorted(((n, r) for r, n in zip(SKIP_REASONS, global_counts[1:]) if n), reverse=True)
    why = ", ".join(f"{r} {n:,}" + (f" (e.g. {details[r]})" if r in details else "") for n, r in reasons)
    where = ", ".join(f"{shard} ({n:,})" for shard, n in worst)
    return DataError(f"data: {fraction:.1%} of the last {window:,}+ samples were skipped, over the limit of "
                     f"{limit:.1%} (data.max_skip_fraction). Skipped so far: {why}. Worst shards: {where}")
