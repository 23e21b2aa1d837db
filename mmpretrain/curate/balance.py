"""MetaCLIP's balancing: match captions against a list of entries (metadata), cap each entry at `per_entry`.

A caption matches an entry when the entry occurs in it (whole words by default; `whole_words: false` for raw
substrings). An entry matched by `count` surviving samples keeps each of them with probability
``min(1, per_entry / count)``; a sample is kept when any of its entries keeps it, so head entries are cut back and
tail entries kept whole (MetaCLIP, Xu et al. 2023, "curation algorithm"). The draw for (sample, entry) is a hash of
the seed, the shard, the key and the entry: the same on every worker, in any order, on a rerun.

Matching uses an Aho-Corasick automaton (pyahocorasick), one pass over each caption whatever the entry count.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import ahocorasick
import numpy as np
import pyarrow as pa

from mmpretrain.curate.stages import FitContext, Stage, StageResult, register_stage, require
from mmpretrain.curate.table import strings


def read_entries(entries: list[str] | str) -> list[str]:
    """Entries inline, or a file path (one per line); lower-cased, stripped, first occurrence kept."""
    if isinstance(entries, str):
        path = Path(entries)
        if not path.is_file():
            raise FileNotFoundError(f"balance: entry file {path} does not exist")
        entries = path.read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(e.strip().lower() for e in entries if e.strip()))


def build_matcher(entries: list[str]) -> ahocorasick.Automaton:
    automaton = ahocorasick.Automaton()
    for index, entry in enumerate(entries):
        automaton.add_word(entry, (index, entry))
    automaton.make_automaton()
    return automaton


def match_entries(caption: str, automaton: ahocorasick.Automaton, whole_words: bool) -> list[int]:
    """Sorted indices of the entries that occur in `caption` (lower-cased)."""
    text = caption.lower()
    found = set()
    if len(automaton) == 0:
        return []
    for end, (index, entry) in automaton.iter(text):
        start = end - len(entry) + 1
        if whole_words and ((start > 0 and text[start - 1].isalnum()) or (end + 1 < len(text) and text[end + 1].isalnum())):
            continue
        found.add(index)
    return sorted(found)


def uniform(seed: int, shard: str, key: str, entry: int) -> float:
    """A uniform draw in [0, 1) fixed by its arguments (64 bits of BLAKE2b)."""
    digest = hashlib.blake2b(f"{seed}\x00{shard}\x00{key}\x00{entry}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


@register_stage("balance")
@dataclass
class Balance(Stage):
    per_sample: ClassVar[bool] = False
    score_columns: ClassVar[tuple[str, ...]] = ("entries_matched",)
    entries: Any = None                     # a list of strings, or the path of a file with one entry per line
    per_entry: int = 20000                  # MetaCLIP's t (20k for 400M, 170k for 2.5B)
    whole_words: bool = True
    keep_unmatched: bool = False            # MetaCLIP drops captions that match no entry
    seed: Optional[int] = None              # default: the config's seed
    counts: dict[int, int] = field(default_factory=dict, init=False)  # fitted: surviving samples per entry
    _entries: list[str] = field(default_factory=list, init=False, repr=False)

    def check(self, label: str) -> None:
        require(isinstance(self.entries, (str, list)) and bool(self.entries), label,
                "'entries' is required: a list of strings or a file with one entry per line")
        require(self.per_entry >= 1, label, "per_entry must be >= 1")
        try:
            self._entries = read_entries(self.entries)
        except FileNotFoundError as e:
            require(False, label, str(e))
        require(bool(self._entries), label, "the entry list is empty")

    def _matches(self, table: pa.Table) -> list[list[int]]:
        automaton = build_matcher(self._entries)
        return [match_entries(c, automaton, self.whole_words) for c in strings(table, "caption")]

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        if self.seed is None:
            self.seed = ctx.seed
        total: Counter = Counter()
        for part in ctx.over_parts(self._count):
            total.update(part)
        self.counts = dict(total)
        head = sum(1 for n in self.counts.values() if n > self.per_entry)
        return {"entries": len(self._entries), "matched_entries": len(self.counts), "head_entries": head,
                "per_entry": self.per_entry}

    def _count(self, table: pa.Table) -> Counter:
        return Counter(i for matched in self._matches(table) for i in matched)

    def keep(self, shard: str, key: str, matched: list[int]) -> bool:
        assert self.seed is not None
        return any(uniform(self.seed, shard, key, i) < self.per_entry / self.counts[i] for i in matched)

    def apply(self, table: pa.Table) -> StageResult:
        shards, keys = strings(table, "shard"), strings(table, "key")
        reasons: list[Optional[str]] = []
        entries_matched = []
        for shard, key, matched in zip(shards, keys, self._matches(table)):
            entries_matched.append(len(matched))
            if not matched:
                reasons.append(None if self.keep_unmatched else "no_entry_match")
            else:
                reasons.append(None if self.keep(shard, key, matched) else "balance")
        return StageResult(reasons, {"entries_matched": np.array(entries_matched, np.float32)})

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(self._entries).encode()).hexdigest()[:16]  # the contents, not the path
        return {"type": self.type, "entries": len(self._entries), "entries_sha256": digest, "per_entry": self.per_entry,
                "whole_words": self.whole_words, "keep_unmatched": self.keep_unmatched, "seed": self.seed}
