"""Preview and report rule-based hard negatives for a caption file or a shard set, or write them into shards.

    mmpretrain negatives [preview] CAPTIONS.txt|CAPTIONS.jsonl|SHARDS [--types swap_attributes,count]
                         [--per-caption K] [--seed S] [--out FILE.jsonl] [--report FILE.json] [--filter-margin M]
                         [--limit N]
    mmpretrain negatives write SHARDS OUT_DIR [--types ...] [--per-caption K] [--seed S] [--filter-margin M]
                         [--in-vocabulary] [--per-sample K [--mix type=weight,...]] [--replace]

(or `python -m mmpretrain.data_tools.negatives ...`). Input: a .txt file holds one sample per line (a sample's
several positive captions separated by tabs); a .jsonl file one object per line with "captions" (or "caption") and
optionally "key"; anything else is a shard set (directory, glob or brace pattern) whose samples' .txt members are
their captions. Output: one JSON line per sample (key, positives, negatives with type, detail and blind margin),
and a table per type: captions tried, negatives emitted, not applicable (with the commonest reason), and the blind
accuracy of a Kneser-Ney trigram model trained on the positives of the other folds (mmpretrain/negatives/blind.py).

`write` copies a shard set into OUT_DIR, every member byte for byte, adding `<key>.neg.json` (the negatives, read
by training with data.negatives_per_sample=k) and `<key>.negtypes.json` (their types) to each sample, plus
sizes.json and negatives-report.json. It resumes: rerun the same command after an interruption and finished
shards are kept, the rest written again (mmpretrain/negatives/offline.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmpretrain.negatives.base import available_generators
from mmpretrain.negatives.report import format_report, read_samples, run


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--types", default=",".join(available_generators()),
                        help=f"comma-separated negative types (default: all of {','.join(available_generators())})")
    parser.add_argument("--per-caption", type=int, default=1, help="negatives per type per positive caption")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--filter-margin", type=float, default=None,
                        help="drop negatives the blind model finds worse than their positive by more than this "
                             "(mean log-probability per token, nats); default: keep all")
    parser.add_argument("--folds", type=int, default=2, help="cross-fitting folds of the blind model (1: train "
                                                             "on every sample, flattering the positives)")
    parser.add_argument("--in-vocabulary", action="store_true",
                        help="replace attributes and objects only with words the input's captions use (a word the "
                             "data never uses gives the negative away to a text-only model)")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mmpretrain negatives", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("source", help="captions .txt / .jsonl, or a shard set (directory, glob, brace pattern)")
    parser.add_argument("--out", type=Path, help="write one JSON line per sample here")
    parser.add_argument("--report", type=Path, help="write the per-type report as JSON here")
    _common_args(parser)
    parser.add_argument("--limit", type=int, default=None, help="read at most this many samples")
    parser.add_argument("--show", type=int, default=0, help="print this many negatives per type")
    return parser.parse_args(argv)


def _parse_write_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mmpretrain negatives write",
                                     description="copy a shard set, adding <key>.neg.json to every sample")
    parser.add_argument("source", help="the input shard set (directory, glob, brace pattern)")
    parser.add_argument("out_dir", type=Path, help="where the new shards go (resumes what is there)")
    _common_args(parser)
    parser.add_argument("--per-sample", type=int, default=None,
                        help="keep this many negatives per sample, their types drawn by --mix (default: keep all)")
    parser.add_argument("--mix", default="", help="type=weight,... for --per-sample (a type left out weighs 1)")
    parser.add_argument("--replace", action="store_true", help="inputs that already have neg.json: replace it")
    parser.add_argument("--compositional", action="store_true",
                        help="write a compositional test set (kind: compositional, format: shards): negatives of the "
                             "first caption, typed; use types held out from training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _types(text: str) -> list[str]:
    types = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in types if t not in available_generators()]
    if unknown:
        raise ValueError(f"unknown negative type {unknown[0]!r}; known: {', '.join(available_generators())}")
    if not types:
        raise ValueError("--types names no type")
    return types


def _mix(text: str, types: list[str]) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in types:
            raise ValueError(f"--mix names {name!r}, which --types {','.join(types)} lacks")
        try:
            mix[name] = float(weight)
        except ValueError:
            raise ValueError(f"--mix {part!r}: expected type=weight") from None
        if mix[name] < 0:
            raise ValueError(f"--mix {part!r}: a weight must be >= 0")
    if types and not any(mix.get(t, 1.0) > 0 for t in types):
        raise ValueError("--mix: every weight is 0")
    return mix


def write_main(argv: list[str]) -> int:
    """`mmpretrain negatives write`: returns the exit code (0 ok, 2 bad input)."""
    from mmpretrain.negatives.offline import REPORT_FILE, WriteOptions, write_negative_shards

    args = _parse_write_args(argv)
    try:
        types = _types(args.types)
        if args.per_caption < 1 or (args.per_sample is not None and args.per_sample < 1):
            raise ValueError("--per-caption and --per-sample must be at least 1")
        if args.mix and args.per_sample is None:
            raise ValueError("--mix chooses among the negatives kept by --per-sample: give --per-sample too")
        options = WriteOptions(types=tuple(types), per_caption=args.per_caption, seed=args.seed,
                               filter_margin=args.filter_margin, in_vocabulary=args.in_vocabulary,
                               folds=args.folds, per_sample=args.per_sample, mix=_mix(args.mix, types),
                               replace=args.replace, compositional=args.compositional)
        summary = write_negative_shards(args.source, args.out_dir, options, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"mmpretrain negatives write: error: {error}", file=sys.stderr)
        return 2
    print(format_report(summary))
    print(f"{summary['samples_written']} samples in {summary['shards']} shards under {args.out_dir}; "
          f"{summary['samples_without_negatives']} without negatives; report: {args.out_dir / REPORT_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 2 bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["write"]:
        return write_main(argv[1:])
    if argv[:1] == ["preview"]:
        argv = argv[1:]
    args = _parse_args(argv)
    try:
        types = _types(args.types)
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
