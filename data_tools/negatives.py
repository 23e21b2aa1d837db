"""Preview and report rule-based hard negatives for a caption file or a shard set.

    mmpretrain negatives CAPTIONS.txt|CAPTIONS.jsonl|SHARDS [--types swap_attributes,count] [--per-caption K]
                         [--seed S] [--out FILE.jsonl] [--report FILE.json] [--filter-margin M] [--limit N]

(or `python -m mmpretrain.data_tools.negatives ...`). Input: a .txt file holds one sample per line (a sample's
several positive captions separated by tabs); a .jsonl file one object per line with "captions" (or "caption") and
optionally "key"; anything else is a shard set (directory, glob or brace pattern) whose samples' .txt members are
their captions. Output: one JSON line per sample (key, positives, negatives with type, detail and blind margin),
and a table per type: captions tried, negatives emitted, not applicable (with the commonest reason), and the blind
accuracy of a Kneser-Ney trigram model trained on the positives of the other folds (mmpretrain/negatives/blind.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmpretrain.negatives.base import available_generators
from mmpretrain.negatives.report import format_report, read_samples, run


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mmpretrain negatives", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("source", help="captions .txt / .jsonl, or a shard set (directory, glob, brace pattern)")
    parser.add_argument("--types", default=",".join(available_generators()),
                        help=f"comma-separated negative types (default: all of {','.join(available_generators())})")
    parser.add_argument("--per-caption", type=int, default=1, help="negatives per type per positive caption")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write one JSON line per sample here")
    parser.add_argument("--report", type=Path, help="write the per-type report as JSON here")
    parser.add_argument("--filter-margin", type=float, default=None,
                        help="drop negatives the blind model finds worse than their positive by more than this "
                             "(mean log-probability per token, nats); default: keep all")
    parser.add_argument("--folds", type=int, default=2, help="cross-fitting folds of the blind model (1: train "
                                                             "on every sample, flattering the positives)")
    parser.add_argument("--in-vocabulary", action="store_true",
                        help="replace attributes and objects only with words the input's captions use (a word the "
                             "data never uses gives the negative away to a text-only model)")
    parser.add_argument("--limit", type=int, default=None, help="read at most this many samples")
    parser.add_argument("--show", type=int, default=0, help="print this many negatives per type")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 2 bad input)."""
    args = _parse_args(argv)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    try:
        unknown = [t for t in types if t not in available_generators()]
        if unknown:
            raise ValueError(f"unknown negative type {unknown[0]!r}; known: {', '.join(available_generators())}")
        samples = read_samples(args.source, args.limit)
        rows, summary = run(samples, types, args.per_caption, args.seed, args.folds, args.filter_margin,
                            args.in_vocabulary)
    except (ValueError, FileNotFoundError) as error:
        print(f"mmpretrain negatives: error: {error}", file=sys.stderr)
        return 2
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if args.report:
        args.report.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    if args.show:
        shown: dict[str, int] = {}
        for row in rows:
            for n in row["negatives"]:
                if shown.get(n["type"], 0) < args.show:
                    shown[n["type"]] = shown.get(n["type"], 0) + 1
                    print(f"[{n['type']}] {n['source']!r} -> {n['text']!r}")
    print(format_report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
