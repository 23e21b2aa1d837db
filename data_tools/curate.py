"""Curate shard sets on Ray: filter, balance, de-duplicate, decontaminate, add hard negatives, reshard.

    mmpretrain curate CONFIG [key=value ...] [--address ray://HOST:10001 | auto] [--restart] [--no-progress]

(or `python -m mmpretrain.data_tools.curate ...`). CONFIG is a YAML file (configs/curation/demo.yaml is the
example); overrides are dotted keys (``output=/data/curated``, ``stages.2.top_fraction=0.3``). Without --address
a local Ray is started with the config's ``ray.num_cpus`` / ``ray.object_store_mb``; with it, the job joins that
cluster (run it on the head node, or a machine that reaches it). Rerun the same command after an interruption to
continue; see docs/CURATION.md.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mmpretrain.errors import ConfigError


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mmpretrain curate", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("config", help="curation config (YAML), e.g. configs/curation/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto, ray://head:10001) "
                                                        "instead of starting a local Ray")
    parser.add_argument("--restart", action="store_true", help="discard what an earlier run left in the output "
                                                               "folder and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_intermixed_args(argv)  # overrides may come after the flags


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input or config)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mmpretrain").setLevel(logging.INFO)
    from mmpretrain.curate.config import load_curate_config
    from mmpretrain.curate.pipeline import curate, format_summary

    try:
        for override in args.overrides:
            if "=" not in override:
                raise ConfigError(f"override {override!r} is not key=value")
        config = load_curate_config(args.config, args.overrides)
        summary = curate(config, address=args.address, restart=args.restart, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, FileExistsError, PermissionError) as error:
        print(f"mmpretrain curate: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(f"decision table: {config.output}/decisions/ (Parquet); summary: {config.output}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
