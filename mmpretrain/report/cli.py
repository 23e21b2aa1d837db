"""The `report` subcommand: `add_parser` adds it to mmpretrain's parser, `run` carries it out.

Wiring (mmpretrain/cli.py): `report_cli.add_parser(commands)` in `_parser()` and `"report": report_cli.run` in
main's command table. `run` raises the errors main() already reports in one line (ConfigError, FileNotFoundError,
FileExistsError: exit 2); `main` here does the same for `python -m mmpretrain.report.cli`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from mmpretrain.errors import ConfigError

HELP = "a static HTML page with plots of training runs and benchmark results"


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="RUN_DIR|BENCHMARK_DIR",
                        help="training run directories (metrics.jsonl, config.yaml, results.json) and/or "
                             "`mmpretrain benchmark` output directories (results.jsonl), in the page's order")
    parser.add_argument("--out", metavar="DIR",
                        help="the report folder: index.html and assets/ (default: report/ inside the first input)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing report folder (only ever one holding an earlier report)")
    parser.add_argument("--title", help="the page's title (default: 'mmpretrain report: ' and the inputs' names)")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `report` to mmpretrain's subcommands (the action `add_subparsers` returned)."""
    report = commands.add_parser("report", help=HELP, description=f"{HELP}. The page opens from disk, offline.")
    _arguments(report)


def run(args: argparse.Namespace) -> int:
    """Write the report; prints where it is. Returns 0; bad input raises (one-line errors, see the module doc)."""
    from mmpretrain.report.build import build_report

    page = build_report([Path(p) for p in args.inputs], Path(args.out) if args.out else None, title=args.title,
                        overwrite=args.overwrite)
    print(f"report written to {page}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m mmpretrain.report.cli ...`: the subcommand on its own, with mmpretrain's one-line errors."""
    parser = argparse.ArgumentParser(prog="mmpretrain report", description=f"{HELP}. The page opens from disk.")
    _arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ConfigError, FileNotFoundError, FileExistsError, PermissionError) as e:
        print(f"mmpretrain report: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
