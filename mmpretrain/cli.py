"""`mmpretrain train|eval|benchmark|report|export|demo|doctor|launch|write-shards|negatives|curate`: parse, load the config, call one function."""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from mmpretrain.config import RunConfig, load_config
from mmpretrain.errors import ConfigError, DataError, StorageError
from mmpretrain.report import cli as report_cli


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    # This positional takes only the overrides right after the config; parse_args() collects the rest.
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, anywhere after the config, e.g. train.steps=500 data.batch_size=64")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmpretrain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train from a YAML config")
    train.add_argument("config", help="config file, or a name under configs/ (e.g. demo)")
    train.add_argument("--resume", metavar="latest|PATH", help="continue from the newest or a given checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--allow-changes", metavar="KEY,KEY", default="",
                       help="at --resume, let these changes that break an exact resume through (a key or a "
                            "section, e.g. model,data.shards.train), with a warning")
    _add_overrides(train)

    evaluate = commands.add_parser("eval", help="zero-shot / retrieval evaluation of a run, a config or an export")
    evaluate.add_argument("target", help="a run directory (uses its config and newest checkpoint), a config, or an "
                                         "export directory in mmpretrain's format (`export --format mmpretrain`)")
    evaluate.add_argument("--checkpoint", help="checkpoint to evaluate (default: the run's newest)")
    evaluate.add_argument("--config", dest="eval_config", metavar="CONFIG",
                          help="for an export directory: the config whose eval section (and train.device) to use; "
                               "overrides apply on top (default: the tasks given as eval.tasks=[...] overrides)")
    evaluate.add_argument("--out", help="where to write the flat results JSON (default: beside the run, or in the "
                                        "export directory)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    evaluate.add_argument("--random-init", action="store_true",
                          help="score a config's model untrained (no checkpoint, no model.pretrained) on purpose")
    _add_overrides(evaluate)

    bench = commands.add_parser("benchmark", help="zero-shot benchmark suites (CLIP_benchmark / DataComp task "
                                                  "lists) over many models at once, resumable")
    bench.add_argument("suite", help="a suite YAML (configs/suites/quick.yaml, datacomp.yaml, or your own)")
    bench.add_argument("--model", dest="models", action="append", default=[], metavar="[LABEL=]SPEC",
                       help="a run directory, an export directory, or an open_clip name[:pretrained file]; "
                            "repeatable (models with equal preprocessing share one pass over each dataset)")
    bench.add_argument("--out", default="benchmark_results", help="output directory (results.jsonl, tables, "
                                                                  "per-model results.json); rerun to resume")
    bench.add_argument("--tasks", default="", metavar="NAME,NAME", help="only these tasks of the suite")
    bench.add_argument("--batch-size", type=int, default=64, help="images per forward (default 64)")
    bench.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images (default 2)")
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--no-amp", dest="amp", action="store_false",
                       help="fp32 on GPU too (default: bf16 autocast on CUDA; the CPU always runs fp32)")
    bench.add_argument("--strict", action="store_true", help="a task whose data are absent is an error, not "
                                                             "'missing'")
    bench.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    _add_overrides(bench)

    report_cli.add_parser(commands)

    export = commands.add_parser("export", help="write a run's model as an open_clip checkpoint (image-text "
                                                "models) or in mmpretrain's format (any towers)")
    export.add_argument("source", help="a run directory (newest checkpoint) or a checkpoint file")
    export.add_argument("out", help="output directory (open_clip_config.json + weights, or mmpretrain_config.json "
                                    "+ mmpretrain_model.safetensors)")
    export.add_argument("--format", dest="formats", action="append",
                        choices=["open_clip", "mmpretrain", "safetensors", "bin"],
                        help="open_clip or mmpretrain: the format (default: open_clip for an image-text model, "
                             "mmpretrain for any other); safetensors, bin: open_clip's weight files (default: "
                             "both). Repeatable")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")

    doctor = commands.add_parser("doctor", help="what state a run directory is in: checkpoints, config changes, "
                                                "lock, skips, last logged step, results")
    doctor.add_argument("run_dir", help="a run directory (output_dir/run_name)")

    # `launch`, `write-shards` and `negatives` are listed for --help only: main() hands their arguments on before parsing.
    commands.add_parser("launch", help="start training: `launch slurm ...` (sbatch) or `launch local ...` "
                                      "(N processes); see `mmpretrain launch --help`")
    commands.add_parser("write-shards", help="write WebDataset shards from a folder or a CSV/JSONL/Parquet "
                                            "manifest; see `mmpretrain write-shards --help`")
    commands.add_parser("curate", help="curate shard sets on Ray (filters, CLIP score, MetaCLIP balancing, SemDeDup, "
                                      "decontamination, negatives); see `mmpretrain curate --help`")
    commands.add_parser("negatives", help="preview rule-based hard-negative captions of a caption file or shards, "
                                         "with per-type counts and blind accuracy; see `mmpretrain negatives --help`")

    demo = commands.add_parser("demo", help="generate the embedded data, train a small model, evaluate")
    demo.add_argument("--data-root", default="data/demo", help="where the demo shards are (generated if absent)")
    demo.add_argument("--output-dir", default="runs", help="parent of the demo run directory")
    _add_overrides(demo)
    return parser


# An override is key=value with a key that is not an option: `--out=x` stays an (unknown) option.
_OVERRIDE = re.compile(r"^[^-=][^=]*=")


class UsageError(Exception):
    """A command line that names an unknown option or argument; reported in one line, exit 2."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line, taking `key.sub=value` overrides anywhere after the config.

    argparse alone cannot: the `overrides` positional (nargs="*") only takes the run right after the config, so
    `eval RUN --out x train.steps=5` would end in "unrecognized arguments". The leftovers of parse_known_args are
    appended to the overrides, in command-line order, when every one of them is an override."""
    args, leftovers = _parser().parse_known_args(argv)
    strays = [arg for arg in leftovers if not _OVERRIDE.match(arg)]
    if strays:
        raise UsageError(f"mmpretrain {args.command}: error: unrecognized argument {strays[0]!r} "
                         f"(see `mmpretrain {args.command} --help`; overrides are key.sub=value)")
    if leftovers and not hasattr(args, "overrides"):
        raise UsageError(f"mmpretrain {args.command}: error: takes no config overrides, got {leftovers[0]!r}")
    if leftovers:
        args.overrides = [*args.overrides, *leftovers]
    return args


def _load(config: str, overrides: Sequence[str]) -> RunConfig:
    from mmpretrain.paths import resolve_config_path

    return load_config(resolve_config_path(config), overrides)


# The sbatch script (launch/templates/sbatch.sh) requeues a job whose log holds this line: torchrun reports the
# trainer's exit 124 as 1, so the line is what tells "checkpoint saved, requeue me" from a crash.
PREEMPTED_LINE = "mmpretrain train: preempted"


def cmd_train(args: argparse.Namespace) -> int:
    from mmpretrain.engine.preemption import REQUEUE_EXIT_CODE, Preempted
    from mmpretrain.train import train

    config = _load(args.config, args.overrides)
    try:
        allow = [key.strip() for key in args.allow_changes.split(",") if key.strip()]
        result = train(config, resume=args.resume, overwrite=args.overwrite, allow_changes=allow)
    except Preempted as preempted:
        print(f"{PREEMPTED_LINE}: {preempted}", file=sys.stderr)
        return REQUEUE_EXIT_CODE
    print(f"run directory: {result.run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mmpretrain.engine.export_mmpretrain import is_export_dir
    from mmpretrain.eval.evaluate import evaluate_checkpoint

    target = Path(args.target)
    if is_export_dir(target):
        return _eval_export(args, target)
    if args.eval_config:
        raise ConfigError(f"--config applies to an export directory; {target} is not one (no "
                          f"mmpretrain_config.json): a config to evaluate is the target itself")
    run_dir = target if target.is_dir() else None
    if run_dir is not None and not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{target} is neither a run directory (no config.yaml) nor an export in "
                                f"mmpretrain's format (no mmpretrain_config.json)")
    config = load_config(target / "config.yaml", args.overrides) if run_dir else _load(args.target, args.overrides)
    out = Path(args.out) if args.out else (run_dir or config.run_dir) / "eval_results.json"
    failures: dict[str, str] = {}
    results = evaluate_checkpoint(config, run_dir=run_dir, checkpoint=args.checkpoint, out=out,
                                  random_init=args.random_init, overwrite=args.overwrite, failures=failures)
    return _report_eval(results, out, failures)


def _eval_export(args: argparse.Namespace, export_dir: Path) -> int:
    """`mmpretrain eval EXPORT_DIR`: the model is the export's; the tasks come from overrides or --config."""
    from mmpretrain.eval.evaluate import evaluate_export

    if args.checkpoint or args.random_init:
        raise ConfigError(f"{export_dir} is an export: its weights are the model (no --checkpoint or --random-init)")
    model_keys = [o.split("=", 1)[0] for o in args.overrides if o.split("=", 1)[0].split(".")[0] == "model"]
    if model_keys:
        raise ConfigError(f"{export_dir} is an export: its model is as exported, {model_keys[0]} cannot change it")
    config = _load(args.eval_config, args.overrides) if args.eval_config else load_config(None, args.overrides)
    out = Path(args.out) if args.out else export_dir / "eval_results.json"
    failures: dict[str, str] = {}
    results = evaluate_export(export_dir, config.eval, out, device=config.train.device,
                              progress=config.train.progress, overwrite=args.overwrite, failures=failures)
    return _report_eval(results, out, failures)


def _report_eval(results: dict[str, float], out: Path, failures: dict[str, str]) -> int:
    from mmpretrain.eval.harness import format_table

    print(format_table(results))
    print(f"results written to {out}")
    for task, error in failures.items():
        print(f"mmpretrain eval: error: task {task} failed: {error}", file=sys.stderr)
    return 3 if failures else 0


def cmd_export(args: argparse.Namespace) -> int:
    from mmpretrain.engine.export import LAYOUTS, export_model

    chosen = args.formats or []
    layouts = sorted({f for f in chosen if f in LAYOUTS})
    if len(layouts) > 1:
        raise ConfigError(f"--format: pick one of {list(LAYOUTS)}, got both")
    weights = tuple(dict.fromkeys(f for f in chosen if f not in LAYOUTS)) or None
    out, layout = export_model(Path(args.source), Path(args.out), layout=layouts[0] if layouts else None,
                               formats=weights, overwrite=args.overwrite)
    if layout == "open_clip":
        print(f"open_clip checkpoint written to {out}: open_clip.create_model_and_transforms('local-dir:{out}')")
    else:
        print(f"mmpretrain export written to {out}: `mmpretrain eval {out} eval.tasks=[...]`, or "
              f"mmpretrain.engine.export_mmpretrain.load_export('{out}')")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from mmpretrain.benchmark.runner import BenchmarkOptions, run_benchmark
    from mmpretrain.benchmark.suite import load_suite
    from mmpretrain.engine.dist import shutdown

    if args.batch_size < 1 or args.workers < 0:
        raise ConfigError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    suite = load_suite(args.suite, args.overrides)
    if args.tasks:
        suite = suite.select([name.strip() for name in args.tasks.split(",") if name.strip()])
    options = BenchmarkOptions(batch_size=args.batch_size, workers=args.workers, device=args.device,
                               strict=args.strict, progress=args.progress, amp=args.amp)
    out = Path(args.out)
    try:
        done = run_benchmark(suite, args.models, out, options)
    finally:
        shutdown()
    if (out / "table.md").is_file():
        print((out / "table.md").read_text(), end="")
    if done["missing"]:
        print(f"missing ({len(done['missing'])} of {len(suite.tasks)} tasks, data absent): "
              f"{', '.join(done['missing'])} (see {out / 'missing.json'})")
    print(f"results: {out / 'results.jsonl'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mmpretrain.demo import run_demo

    return run_demo(args.data_root, args.output_dir, args.overrides)


def cmd_doctor(args: argparse.Namespace) -> int:
    from mmpretrain.doctor import diagnose

    print("\n".join(diagnose(Path(args.run_dir))))
    return 0


_LOCAL_RANK_FLAG = re.compile(r"^--local[-_]rank=\d+$")

# Commands with a parser of their own, in the repository's launch/ and data_tools/ folders (installed as these
# modules). They are imported only when called: the library proper never imports them (ARCHITECTURE.md).
_DELEGATED = {"launch": "mmpretrain.launch.cli", "write-shards": "mmpretrain.data_tools.write_shards",
              "negatives": "mmpretrain.data_tools.negatives", "curate": "mmpretrain.data_tools.curate"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    # The deepspeed launcher passes --local_rank=N first; the rank comes from its environment (LOCAL_RANK).
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if not _LOCAL_RANK_FLAG.match(a)]
    if argv and argv[0] in _DELEGATED:
        return importlib.import_module(_DELEGATED[argv[0]]).main(argv[1:])
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    # Our own progress at INFO; libraries (open_clip logs through the root logger) only at WARNING and above.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mmpretrain").setLevel(logging.INFO)
    commands = {"train": cmd_train, "eval": cmd_eval, "benchmark": cmd_benchmark, "report": report_cli.run,
                "export": cmd_export, "demo": cmd_demo, "doctor": cmd_doctor}
    try:
        return commands[args.command](args)
    except (ConfigError, FileNotFoundError, FileExistsError, PermissionError) as e:
        # Bad input is the user's to fix: say what is wrong in one line, without a traceback. (PermissionError's
        # message names the path: an output or checkpoint directory that cannot be written.)
        print(f"mmpretrain {args.command}: error: {e}", file=sys.stderr)
        return 2
    except StorageError as e:  # a full disk while saving: one line naming the errno and the path
        print(f"mmpretrain {args.command}: error: {e}", file=sys.stderr)
        return 3
    except DataError as e:  # the data went bad mid-run (checkpoints so far are kept)
        print(f"mmpretrain {args.command}: error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
