"""Offline hard negatives: a copy of a shard set with `<key>.neg.json` (and `<key>.negtypes.json`) in every sample.

Every member of an input sample is copied byte for byte (read as bytes by the safe reader, never decoded or
unpickled); `neg.json` is the JSON list of strings training reads (data/decode.py::decode_negatives), and
`negtypes.json` the parallel list of their types (a sidecar, since training accepts only strings in neg.json and
declares no other member, so it never reads it). One output shard per input shard, under the same name.

Resumable, each sample exactly once: a shard is written to `<name>.partial` (a name no shard spec matches), renamed
when complete, then recorded in `.negatives/<name>.json` (its samples, bytes and counts). On a rerun a shard whose
record matches the file on disk is skipped and any other is written again from its start, so a partial file or
a shard renamed but not yet recorded is redone. A sample's negatives depend only on the sample, the options and
the blind model of the whole input, so a resumed run writes the very bytes an uninterrupted one would; the
options are recorded and a rerun with others is refused.

Samples that get fewer negatives than asked (no type applies to their captions, or all were filtered): written
with the ones they have, possibly `[]`, and counted in the report (`negatives_per_sample` histogram). In training
(`data.negatives_per_sample=k`) a sample with 1..k-1 draws repeats to fill its k columns; one with none is
skipped as `negatives_invalid`.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import webdataset as wds
from tqdm import tqdm

from mmpretrain.data.decode import decode_captions
from mmpretrain.data.safe_tar import DEFAULT_MAX_MEMBER_BYTES, EVERY_MEMBER, ShardFailure, read_shard
from mmpretrain.data.shard_writer import _TAR_MTIME
from mmpretrain.data.shards import expand_shards, read_shard_sizes, update_sizes
from mmpretrain.data.skips import SampleSkipped
from mmpretrain.negatives.api import NegativeReport, TypeCounts, caption_vocabulary, generate_negatives
from mmpretrain.negatives.base import Negative
from mmpretrain.negatives.blind import BlindResult, Scorer, blind_accuracy, blind_filter, cross_fitted_scorers
from mmpretrain.negatives.select import mixed_negatives

PROGRESS_DIR = ".negatives"
REPORT_FILE = "negatives-report.json"
PARTIAL_SUFFIX = ".partial"
NEGATIVE_MEMBERS = ("neg.json", "negtypes.json")


@dataclass(frozen=True)
class WriteOptions:
    """What decides the negatives written; recorded beside the output so a resume cannot mix two settings."""

    types: tuple[str, ...]
    per_caption: int = 1
    seed: int = 0
    filter_margin: Optional[float] = None
    in_vocabulary: bool = False
    folds: int = 2
    per_sample: Optional[int] = None  # keep this many per sample, their types drawn by `mix`; None: keep all
    mix: Mapping[str, float] = field(default_factory=dict)  # type -> weight (a type left out weighs 1)
    replace: bool = False  # an input that already has neg.json: replace it (else refused)
    # A compositional test set (`kind: compositional, format: shards`) rather than training data: negatives of the
    # first caption only (the positive the evaluation compares them with), written as typed {"text", "type"}
    # objects in neg.json, which training refuses: an evaluation set is not trained on by mistake.
    compositional: bool = False

    def weights(self) -> dict[str, float]:
        return {t: float(self.mix.get(t, 1.0)) for t in self.types}

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "types": list(self.types), "mix": dict(self.mix)}


@dataclass
class ShardRecord:
    """What one finished output shard holds: the proof it is complete (bytes, samples) and its counts."""

    samples: int = 0
    bytes: int = 0
    source_bytes: int = 0  # the input shard's size: an input changed since is written again
    report: NegativeReport = field(default_factory=NegativeReport)
    blind: dict[str, BlindResult] = field(default_factory=lambda: defaultdict(BlindResult))
    filtered: Counter = field(default_factory=Counter)
    written: Counter = field(default_factory=Counter)  # negatives written, per type
    histogram: Counter = field(default_factory=Counter)  # negatives per sample -> samples
    no_captions: int = 0
    dropped_oversized: int = 0
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "bytes": self.bytes, "source_bytes": self.source_bytes, "report": self.report.to_json(),
                "blind": {t: asdict(b) for t, b in self.blind.items()}, "filtered": dict(self.filtered),
                "written": dict(self.written), "histogram": {str(k): v for k, v in sorted(self.histogram.items())},
                "no_captions": self.no_captions, "dropped_oversized": self.dropped_oversized,
                "failures": self.failures}


class Blind:
    """The cross-fitted blind scorers and the vocabulary, both from the captions of the whole input: read once
    per run (a resumed run reads them again, and so writes what the uninterrupted run would)."""

    def __init__(self, shards: Sequence[str], options: WriteOptions, progress: bool) -> None:
        samples: list[tuple[str, list[str]]] = []
        for shard in tqdm(shards, desc="reading captions", unit="shard", disable=not progress):
            for item in read_shard(shard, ["txt"]):
                if not isinstance(item, ShardFailure) and "__oversized__" not in item:
                    samples.append((item["__key__"], _captions(item)))
        self.scorer_for: Callable[[str], Scorer] = cross_fitted_scorers(samples, folds=options.folds)
        self.vocabulary = caption_vocabulary(c for _, cs in samples for c in cs) if options.in_vocabulary else None


def _captions(item: Mapping[str, Any]) -> list[str]:
    try:
        return decode_captions(item.get("txt"))
    except SampleSkipped:
        return []


def sample_negatives(key: str, captions: list[str], options: WriteOptions, blind: Blind, record: ShardRecord
                     ) -> list[Negative]:
    """One sample's negatives as written: generated, scored blind, filtered, then chosen by mix if asked."""
    if not captions:
        record.no_captions += 1
        return []
    negatives, report = generate_negatives(captions, options.types, options.per_caption, options.seed, key,
                                           vocabulary=blind.vocabulary)
    record.report.merge(report)
    scorer = blind.scorer_for(key)
    for type_, result in blind_accuracy((n, scorer) for n in negatives).items():
        mine = record.blind[type_]
        for name in ("pairs", "positive_preferred", "ties", "margin_sum"):
            setattr(mine, name, getattr(mine, name) + getattr(result, name))
    if options.filter_margin is not None:
        negatives, dropped = blind_filter(negatives, scorer, options.filter_margin)
        record.filtered.update(n.type for n in dropped)
    if options.per_sample is not None:
        by_type: dict[str, list[Negative]] = defaultdict(list)
        for negative in negatives:
            by_type[negative.type].append(negative)
        rng = random.Random(f"{options.seed}-{key}-mix")
        negatives = mixed_negatives(lambda t: by_type.get(t, []), options.weights(), options.per_sample, rng)
    return negatives


def _write_shard(shard: str, partial: Path, expected: Optional[int], options: WriteOptions, blind: Blind,
                 max_member_bytes: int, bar: tqdm) -> ShardRecord:
    record = ShardRecord()
    with open(partial, "wb") as f:
        sink = wds.TarWriter(f, encoder=False, mtime=_TAR_MTIME)
        for item in read_shard(shard, EVERY_MEMBER, expected=expected, max_member_bytes=max_member_bytes):
            if isinstance(item, ShardFailure):
                record.failures.append(f"{item.reason}: {item.detail} ({item.lost} sample(s) lost)")
                continue
            bar.update(1)
            key = item["__key__"]
            if "__oversized__" in item:  # its bytes were never read, so it cannot be copied
                record.dropped_oversized += 1
                continue
            if any(m in item for m in NEGATIVE_MEMBERS) and not options.replace:
                raise ValueError(f"{shard}: sample {key!r} already has a neg.json/negtypes.json member; pass "
                                 "--replace to write new ones instead")
            captions = _captions(item)
            negatives = sample_negatives(key, captions[:1] if options.compositional else captions, options, blind,
                                         record)
            members = {k: v for k, v in item.items() if not k.startswith("__") and k not in NEGATIVE_MEMBERS}
            if options.compositional:
                typed = [{"text": n.text, "type": n.type} for n in negatives]
                members["neg.json"] = json.dumps(typed, ensure_ascii=False).encode("utf-8")
            else:
                members["neg.json"] = json.dumps([n.text for n in negatives], ensure_ascii=False).encode("utf-8")
                members["negtypes.json"] = json.dumps([n.type for n in negatives]).encode("utf-8")
            sink.write({"__key__": key, **members})
            record.samples += 1
            record.written.update(n.type for n in negatives)
            record.histogram[len(negatives)] += 1
        sink.close()  # the tar's end blocks; the file is ours to sync and close
        f.flush()
        os.fsync(f.fileno())
    record.bytes = partial.stat().st_size
    record.source_bytes = os.path.getsize(shard)
    return record


def _atomic_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _finished(out: Path, progress_dir: Path, name: str, source: str) -> Optional[dict[str, Any]]:
    """The shard's record if the shard on disk is the one it describes and its input has not changed size since,
    else None (to be written again)."""
    marker, shard = progress_dir / f"{name}.json", out / name
    if not (marker.is_file() and shard.is_file()):
        return None
    record = json.loads(marker.read_text(encoding="utf-8"))
    same = record.get("bytes") == shard.stat().st_size and record.get("source_bytes") == os.path.getsize(source)
    return record if same else None


def _check_options(progress_dir: Path, options: WriteOptions) -> None:
    path = progress_dir / "options.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != options.to_json():
            changed = sorted(k for k in before.keys() | options.to_json().keys()
                             if before.get(k) != options.to_json().get(k))
            raise ValueError(f"{path.parent.parent} was written with other options ({', '.join(changed)}: "
                             f"{[before.get(k) for k in changed]} -> {[options.to_json().get(k) for k in changed]}); "
                             "rerun with the same ones to resume, or write to an empty folder")
    else:
        _atomic_json(path, options.to_json())


def summarise(records: Mapping[str, dict[str, Any]], options: WriteOptions) -> dict[str, Any]:
    """The run's report from the shard records: per type generated, not applicable, blind accuracy, filtered,
    written; samples per count of negatives; failures."""
    report, blind, totals = NegativeReport(), defaultdict(BlindResult), Counter()
    filtered, written, histogram = Counter(), Counter(), Counter()
    failures: dict[str, list[str]] = {}
    for name, record in records.items():
        shard_report = NegativeReport(samples=record["report"]["samples"])
        for type_, counts in record["report"]["types"].items():
            mine = shard_report.counts(type_)
            for attr in ("captions", "applied", "emitted", "not_applicable", "equal_to_positive"):
                setattr(mine, attr, counts[attr])
            mine.reasons.update(counts["reasons"])
        report.merge(shard_report)
        for type_, result in record["blind"].items():
            for attr, value in result.items():
                setattr(blind[type_], attr, getattr(blind[type_], attr) + value)
        filtered.update(record["filtered"])
        written.update(record["written"])
        histogram.update({int(k): v for k, v in record["histogram"].items()})
        totals.update(samples=record["samples"], no_captions=record["no_captions"],
                      dropped_oversized=record["dropped_oversized"])
        if record["failures"]:
            failures[name] = record["failures"]
    summary = report.to_json()
    for type_ in options.types:
        counts = summary["types"].setdefault(type_, TypeCounts().to_json())
        counts.update(blind[type_].to_json() if type_ in blind else {"pairs": 0, "blind_accuracy": None})
        counts.update(filtered=filtered[type_], written=written[type_])
    wanted = options.per_sample
    summary.update(
        shards=len(records), samples_written=totals["samples"], no_captions=totals["no_captions"],
        dropped_oversized=totals["dropped_oversized"], shard_failures=failures,
        negatives_per_sample={str(k): v for k, v in sorted(histogram.items())},
        samples_without_negatives=histogram[0],
        samples_below_per_sample=None if wanted is None else sum(v for k, v in histogram.items() if k < wanted),
        filter_margin=options.filter_margin, options=options.to_json(),
        scorer="interpolated Kneser-Ney trigram (D=0.75) on the positives of the other folds; blind accuracy over "
               "every negative generated, before filtering and the per-sample choice")
    return summary


def write_negative_shards(source: str, out_dir: str | Path, options: WriteOptions, progress: bool = True,
                          max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                          after_shard: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Copy the shard set `source` into `out_dir` with negatives added; returns the report (also written to
    `out_dir/negatives-report.json`, with `sizes.json`). `after_shard(name)` runs after each shard is recorded
    (tests interrupt a run there)."""
    shards = expand_shards(source)
    out = Path(out_dir)
    names = [os.path.basename(s) for s in shards]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: two input shards share a file name; the output keeps one name per shard")
    if any(Path(s).resolve().parent == out.resolve() for s in shards):
        raise ValueError(f"{out} holds the input shards: write the copies to another folder")
    progress_dir = out / PROGRESS_DIR
    progress_dir.mkdir(parents=True, exist_ok=True)
    _check_options(progress_dir, options)
    sizes = read_shard_sizes(shards) or {}
    records = {name: _finished(out, progress_dir, name, shard) for shard, name in zip(shards, names)}
    todo = [(shard, name) for shard, name in zip(shards, names) if records[name] is None]
    if todo:
        blind = Blind(shards, options, progress)
        done = sum(r["samples"] for r in records.values() if r is not None)
        total = sum(sizes.values()) if len(sizes) == len(shards) else None
        with tqdm(total=total, initial=done, desc=f"writing {out}", unit="sample", disable=not progress) as bar:
            for shard, name in todo:
                partial = out / (name + PARTIAL_SUFFIX)
                record = _write_shard(shard, partial, sizes.get(shard), options, blind, max_member_bytes, bar)
                os.replace(partial, out / name)
                records[name] = record.to_json()
                _atomic_json(progress_dir / f"{name}.json", records[name])
                if after_shard is not None:
                    after_shard(name)
    finished = {name: record for name, record in records.items() if record is not None}
    # from the samples actually written: a broken input shard holds fewer than its sizes.json said
    update_sizes(out, {name: record["samples"] for name, record in finished.items()})
    summary = summarise(finished, options)
    _atomic_json(out / REPORT_FILE, summary)
    return summary
