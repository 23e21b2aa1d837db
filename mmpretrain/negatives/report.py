"""Negatives over a whole caption file or shard set: read the samples, generate, score blind, filter, report.

The library side of `mmpretrain negatives` (data_tools/negatives.py parses the command line): the shard writer
and the training stage of issue 11 call the same `run` so their reports read alike.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmpretrain.negatives.api import NegativeReport, caption_vocabulary, generate_negatives
from mmpretrain.negatives.base import Negative
from mmpretrain.negatives.blind import blind_accuracy, blind_filter, blind_margin, cross_fitted_scorers

Sample = tuple[str, list[str]]


def read_samples(source: str, limit: int | None = None) -> list[Sample]:
    """(key, positive captions) per sample of a caption file or shard set, in input order."""
    path = Path(source)
    samples: list[Sample] = []
    for sample in _iter_samples(source, path):
        if sample[1]:
            samples.append(sample)
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise ValueError(f"no captions found in {source}")
    return samples


def _iter_samples(source: str, path: Path) -> Iterator[Sample]:
    if path.is_file() and path.suffix.lower() == ".txt":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                yield f"line{n:06d}", [c.strip() for c in line.split("\t") if c.strip()]
    elif path.is_file() and path.suffix.lower() in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if line.strip():
                    row = json.loads(line)
                    captions = row.get("captions", row.get("caption", []))
                    captions = [captions] if isinstance(captions, str) else list(captions)
                    yield str(row.get("key", f"line{n:06d}")), [c.strip() for c in captions if c.strip()]
    else:
        from mmpretrain.data.safe_tar import ShardFailure, read_shards
        from mmpretrain.data.shards import expand_shards

        for sample in read_shards(expand_shards(source), ["txt"]):
            if isinstance(sample, ShardFailure):
                print(f"warning: {sample.shard}: {sample.reason} ({sample.detail})", file=sys.stderr)
                continue
            text = sample.get("txt")
            if isinstance(text, bytes):
                yield sample["__key__"], [c.strip() for c in text.decode("utf-8").splitlines() if c.strip()]


def run(samples: list[Sample], types: list[str], per_caption: int, seed: int, folds: int,
        filter_margin: float | None, in_vocabulary: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate, score blind, optionally filter: the output rows and the report (JSON-ready). `in_vocabulary`:
    replacement words only from the words of these samples' positives."""
    report = NegativeReport()
    made: list[tuple[str, list[str], list[Negative]]] = []
    vocabulary = caption_vocabulary(c for _, captions in samples for c in captions) if in_vocabulary else None
    for key, captions in samples:
        negatives, sample_report = generate_negatives(captions, types, per_caption, seed, key, vocabulary=vocabulary)
        report.merge(sample_report)
        made.append((key, captions, negatives))
    scorer_for = cross_fitted_scorers(samples, folds=folds)
    blind = blind_accuracy((n, scorer_for(key)) for key, _, negatives in made for n in negatives)
    rows, filtered = [], {t: 0 for t in types}
    for key, captions, negatives in made:
        scorer = scorer_for(key)
        kept = negatives
        if filter_margin is not None:
            kept, dropped = blind_filter(negatives, scorer, filter_margin)
            for negative in dropped:
                filtered[negative.type] += 1
        rows.append({"key": key, "positives": captions,
                     "negatives": [{**n.to_json(), "blind_margin": round(blind_margin(n, scorer), 4)} for n in kept]})
    summary = report.to_json()
    for name, counts in summary["types"].items():
        counts.update(blind[name].to_json() if name in blind else {"pairs": 0, "blind_accuracy": None})
        if filter_margin is not None:
            counts["filtered"] = filtered[name]
    summary.update(seed=seed, per_caption=per_caption, folds=folds, filter_margin=filter_margin,
                   in_vocabulary=in_vocabulary,
                   scorer="interpolated Kneser-Ney trigram (D=0.75) on the positives of the other folds; "
                          "score = mean natural-log probability per token")
    return rows, summary


def format_report(summary: dict[str, Any]) -> str:
    filtering = summary.get("filter_margin") is not None
    head = f"{'type':<18}{'captions':>9}{'emitted':>9}{'n/a':>7}{'blind acc':>11}{'filtered':>10}" \
        if filtering else f"{'type':<18}{'captions':>9}{'emitted':>9}{'n/a':>7}{'blind acc':>11}"
    lines = [head + "  commonest reason not applicable"]
    for name, c in summary["types"].items():
        acc = "-" if c["blind_accuracy"] is None else f"{c['blind_accuracy']:.3f}"
        reason = max(c["reasons"].items(), key=lambda kv: kv[1])[0] if c["reasons"] else ""
        line = f"{name:<18}{c['captions']:>9}{c['emitted']:>9}{c['not_applicable']:>7}{acc:>11}"
        lines.append(line + (f"{c['filtered']:>10}" if filtering else "") + f"  {reason}")
    lines.append(f"{summary['samples']} samples; blind acc: how often a text-only trigram model prefers the "
                 f"positive (0.5: text alone gives nothing away)")
    return "\n".join(lines)
