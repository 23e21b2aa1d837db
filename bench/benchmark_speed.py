"""`mmpretrain benchmark` against CLIP_benchmark's `clip_benchmark eval`: the same checkpoints on the same datasets,
wall time side by side, and the metrics checked equal in the same run.

    python bench/benchmark_speed.py                                   # 3 checkpoints x 3 sets of 1000 images, 2 rounds
    python bench/benchmark_speed.py --images 200 --rounds 1           # a quick look
    python bench/benchmark_speed.py --model-name ViT-B-32 --device cuda   # an open_clip architecture, on a GPU

Datasets (generated once into --workdir and reused) are written by CLIP_benchmark's own writer
(`clip_benchmark.webdataset_builder.convert_dataset` / `convert_retrieval_dataset`, its default lossless webp and
unless --image-format), in --shards shards each (default 4): clip_benchmark's loader (webdataset 1.0) fails with
fewer shards than DataLoader workers ("No samples found in dataset; perhaps you have fewer shards than workers"),
and both sides hand whole shards to workers. Photo-sized images (500x375, 640x480, 375x500) of coloured shapes on
textured, noisy backgrounds (see tests/benchmark/cb_reference.py):

- `shapes10`: zero-shot classification, 10 classes, --images images, 10 templates;
- `shapes100`: zero-shot classification, 100 classes, --images images, 10 templates;
- `mscoco_captions`: retrieval, --images images with 5 captions each. It has that name because clip_benchmark's
  `--task auto` knows a retrieval set only by a name it knows, and one invocation covers all three sets.

Models: --checkpoints checkpoints (different seeds) of one architecture, the many-checkpoints use case. By default
`mmp-bench-vit-t16`, defined here (mmp-tiny-vit's towers at 224 px, patch 16: a CPU-sized ViT); `--model-name`
takes any open_clip config. Each checkpoint is random init plus a closed-form fitted image projection
(cb_reference.make_tiny_model), so predictions are not degenerate and the metric check means something. The
output states parameters and FLOPs per image (counted with torch's FlopCounterMode).

Each side runs as a subprocess, with the same batch size and DataLoader workers, fp32:

- clip_benchmark: a wrapper that registers the model configs with open_clip, then calls its CLI
  (`clip_benchmark.cli.main_eval` on its own parser's namespace) ONCE with all checkpoints and datasets as its
  list arguments (`--pretrained a.pt b.pt c.pt --dataset wds/... x3`), `--no_amp --num_workers W`. Its
  per-(model, dataset) time is its `cli.run` call for that pair, timed by the wrapper. clip_benchmark 1.6.2's
  `accuracy()` needs the numpy-2 fix of cb_reference.numpy2_accuracy_fix (same values).
- mmpretrain: a wrapper that registers the same configs, then `mmpretrain benchmark SUITE --model ckptN=NAME:FILE
  x3 --workers W --no-amp`. Its per-(model, dataset) time is `seconds` in results.jsonl (the shared pass over a
  dataset divided among the models that share it, plus the model's own text side and metrics).

Wall time is the subprocess's, start to exit (Python start-up, imports, model loading included). Rounds alternate
which side goes first. Results: --json (default bench/results/benchmark_speed.json) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = ((500, 375), (640, 480), (375, 500))
TEMPLATES = ("a photo of a {c}.", "a blurry photo of a {c}.", "a photo of the {c}.", "a drawing of a {c}.",
             "a close-up photo of a {c}.", "a bright photo of a {c}.", "a dark photo of a {c}.",
             "a photo of a small {c}.", "a photo of a big {c}.", "art of the {c}.")
BENCH_MODEL = "mmp-bench-vit-t16"
BENCH_CONFIG = {
    "embed_dim": 128,
    "custom_text": True,
    "vision_cfg": {"image_size": 224, "layers": 3, "width": 128, "head_width": 32, "mlp_ratio": 2.0,
                   "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3,
                 "mlp_ratio": 2.0},
}
CLASSIFICATION = {"shapes10": 10, "shapes100": 100}
RETRIEVAL = "mscoco_captions"
CAPTIONS = 5
TOLERANCE = 1e-4


# -------------------------------------------------------------------------------------------- inside the sides

def side_clip_benchmark(config_dir: str, timings_file: str, argv: list[str]) -> int:
    """The clip_benchmark side's process: our configs registered, its CLI once, each pair's `run` timed."""
    import open_clip
    open_clip.add_model_config(config_dir)
    from clip_benchmark import cli
    from tests.benchmark.cb_reference import numpy2_accuracy_fix, parse_clip_benchmark_args, register_model_configs
    register_model_configs()
    timings = []
    original_run = cli.run

    def timed_run(args):  # main_eval calls the module's `run` once per (model, dataset, language)
        start = time.perf_counter()
        result = original_run(args)
        timings.append({"model": args.model, "pretrained": args.pretrained, "dataset": args.dataset,
                        "seconds": time.perf_counter() - start})
        return result

    cli.run = timed_run
    args = parse_clip_benchmark_args(argv)
    with numpy2_accuracy_fix():
        cli.main_eval(args)
    Path(timings_file).write_text(json.dumps(timings))
    return 0


def side_mmpretrain(config_dir: str, argv: list[str]) -> int:
    """The mmpretrain side's process: the same configs registered, then its CLI."""
    import open_clip
    open_clip.add_model_config(config_dir)
    from mmpretrain.cli import main
    return main(argv)


# ------------------------------------------------------------------------------------------------------- inputs

def prepare_configs(workdir: Path) -> Path:
    config_dir = workdir / "configs"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / f"{BENCH_MODEL}.json").write_text(json.dumps(BENCH_CONFIG, indent=1))
    return config_dir


def prepare_data(workdir: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The three sets in CLIP_benchmark's layout under workdir/data (rewritten when the parameters change)."""
    from tests.benchmark import cb_reference as cb
    data = workdir / "data"
    max_count = -(-args.images // args.shards)  # the writer's max_count: --shards shards
    params = {"images": args.images, "format": args.image_format, "max_count": max_count,
              "sizes": SIZES, "templates": TEMPLATES, "captions": CAPTIONS, "version": 1}
    marker = data / "params.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(params))):
        shutil.rmtree(data, ignore_errors=True)
        for name, n_classes in CLASSIFICATION.items():
            print(f"writing {name} ({args.images} images) with clip_benchmark's writer ...", flush=True)
            start = time.perf_counter()
            cb.write_classification_set(data / name, n_classes=n_classes, per_class=args.images // n_classes,
                                        sizes=SIZES, seed=1 + n_classes, image_format=args.image_format,
                                        detail=True, max_count=max_count, templates=TEMPLATES)
            print(f"  {time.perf_counter() - start:.0f} s", flush=True)
        print(f"writing {RETRIEVAL} ({args.images} images x {CAPTIONS} captions) ...", flush=True)
        start = time.perf_counter()
        cb.write_retrieval_set(data / RETRIEVAL, n_images=args.images, captions_per_image=CAPTIONS, sizes=SIZES,
                               seed=7, image_format=args.image_format, detail=True, max_count=max_count)
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
        marker.write_text(json.dumps(params))
    info = {}
    for name in [*CLASSIFICATION, RETRIEVAL]:
        shards = sorted((data / name / "test").glob("*.tar"))
        info[name] = {"path": str(data / name), "kind": "retrieval" if name == RETRIEVAL else "zeroshot",
                      "classes": CLASSIFICATION.get(name), "shards": len(shards),
                      "mib": round(sum(s.stat().st_size for s in shards) / 2**20, 1)}
    return info


def prepare_models(workdir: Path, config_dir: Path, args: argparse.Namespace) -> list[Path]:
    import open_clip
    from tests.benchmark import cb_reference as cb
    open_clip.add_model_config(config_dir)
    folder = workdir / "models" / args.model_name
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for seed in range(args.checkpoints):
        path = folder / f"ckpt{seed}.pt"
        if not path.is_file():
            print(f"making {path} ...", flush=True)
            cb.make_tiny_model(path.with_suffix(".tmp"), args.model_name, seed=seed, fit_images=args.fit_images)
            path.with_suffix(".tmp").rename(path)
        files.append(path)
    return files


def model_stats(model_name: str, config_dir: Path) -> dict[str, Any]:
    """Parameters (image tower, whole model) and forward FLOPs of one image, counted by torch."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    open_clip.add_model_config(config_dir)
    model, _, transform = open_clip.create_model_and_transforms(model_name)
    model.eval()
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.encode_image(torch.zeros(1, 3, size, size))
    tokenizer = open_clip.get_tokenizer(model_name)
    text_counter = FlopCounterMode(display=False)
    with torch.no_grad(), text_counter:
        model.encode_text(tokenizer(["a photo of a red circle."]))
    return {"name": model_name, "image_size": size,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "image_params_m": round(sum(p.numel() for p in model.visual.parameters()) / 1e6, 2),
            "image_gflops": round(counter.get_total_flops() / 1e9, 3),
            "text_gflops_per_caption": round(text_counter.get_total_flops() / 1e9, 4)}


def write_suite(workdir: Path, datasets: dict[str, dict[str, Any]]) -> Path:
    lines = ["name: benchmark_speed", f"benchmark_root: {workdir / 'data'}", "tasks:"]
    for name, info in datasets.items():
        main = "acc1" if info["kind"] == "zeroshot" else "mean_recall@1"
        lines.append(f"  - {{name: {name}, kind: {info['kind']}, format: clip_benchmark, "
                     f"path: '${{benchmark_root}}/{name}', main_metric: {main}}}")
    path = workdir / "suite.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# -------------------------------------------------------------------------------------------------------- sides

def _python() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve())]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def run_clip_benchmark(round_dir: Path, config_dir: Path, datasets: dict[str, dict[str, Any]],
                       models: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    from tests.benchmark.cb_reference import clip_benchmark_args
    out = round_dir / "clip_benchmark"
    out.mkdir(parents=True)
    argv = clip_benchmark_args(list(datasets), str(Path(next(iter(datasets.values()))["path"]).parent / "{dataset}"),
                               [args.model_name], [str(m) for m in models],
                               str(out / "{dataset}__{pretrained}.json"), batch_size=args.batch_size,
                               num_workers=args.workers, task="auto", recall_k=(1, 5, 10), amp=False, quiet=False)
    command = [*_python(), "--side", "clip_benchmark", "--config-dir", str(config_dir),
               "--timings", str(out / "timings.json"), "--", *argv]
    load = _load()
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_env())
    wall = time.perf_counter() - start
    pairs = {}
    for timing in json.loads((out / "timings.json").read_text()):
        dataset = timing["dataset"].replace("wds/", "", 1)
        label = Path(timing["pretrained"]).stem
        result = json.loads((out / f"{dataset}__{Path(timing['pretrained']).name}.json").read_text())
        pairs[f"{label}/{dataset}"] = {"seconds": timing["seconds"], "metrics": result["metrics"]}
    return {"wall": wall, "load_before": load, "load_after": _load(), "pairs": pairs}


def run_mmpretrain(round_dir: Path, config_dir: Path, suite: Path, models: list[Path],
                   args: argparse.Namespace) -> dict[str, Any]:
    out = round_dir / "mmpretrain"
    argv = ["benchmark", str(suite)]
    for model in models:
        argv += ["--model", f"{model.stem}={args.model_name}:{model}"]
    argv += ["--out", str(out), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
             "--device", args.device, "--no-amp"]
    command = [*_python(), "--side", "mmpretrain", "--config-dir", str(config_dir), "--", *argv]
    load = _load()
    start = time.perf_counter()
    round_dir.mkdir(parents=True, exist_ok=True)
    with open(round_dir / "mmpretrain.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_env())
    wall = time.perf_counter() - start
    pairs = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            pairs[f"{row['model']}/{row['dataset']}"] = {"seconds": row["mmpretrain"]["seconds"],
                                                         "metrics": row["metrics"],
                                                         "samples": row["mmpretrain"]["samples"]}
    return {"wall": wall, "load_before": load, "load_after": _load(), "pairs": pairs}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if _device_is_cpu():
        env["CUDA_VISIBLE_DEVICES"] = ""  # clip_benchmark takes a GPU whenever it sees one: --device cpu hides it
    return env


_DEVICE = "auto"


def _device_is_cpu() -> bool:
    return _DEVICE == "cpu"


def compare_metrics(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """Every metric clip_benchmark reports, against ours, for every (model, dataset)."""
    worst, failures, count = 0.0, [], 0
    for pair, their in theirs["pairs"].items():
        our = ours["pairs"].get(pair)
        if our is None:
            failures.append(f"{pair}: absent on the mmpretrain side")
            continue
        for name, value in their["metrics"].items():
            count += 1
            mine = our["metrics"].get(name)
            if mine is None:
                failures.append(f"{pair} {name}: absent on the mmpretrain side")
                continue
            diff = abs(float(mine) - float(value))
            worst = max(worst, diff)
            if diff > TOLERANCE:
                failures.append(f"{pair} {name}: mmpretrain {mine} vs clip_benchmark {value}")
    return {"metrics_compared": count, "max_abs_diff": worst, "agree": not failures, "failures": failures}


# --------------------------------------------------------------------------------------------------------- main

def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    theirs_wall = [r["clip_benchmark"]["wall"] for r in rounds]
    ours_wall = [r["mmpretrain"]["wall"] for r in rounds]
    pairs = {}
    for pair in rounds[0]["clip_benchmark"]["pairs"]:
        theirs = [r["clip_benchmark"]["pairs"][pair]["seconds"] for r in rounds]
        ours = [r["mmpretrain"]["pairs"][pair]["seconds"] for r in rounds if pair in r["mmpretrain"]["pairs"]]
        pairs[pair] = {"clip_benchmark_s": round(_median(theirs), 2), "mmpretrain_s": round(_median(ours), 2),
                       "ratio": round(_median(ours) / _median(theirs), 3)}
    # The best round of each side is the figure least disturbed by other load on a shared machine.
    return {"wall": {"clip_benchmark_s": round(_median(theirs_wall), 2), "mmpretrain_s": round(_median(ours_wall), 2),
                     "ratio": round(_median(ours_wall) / _median(theirs_wall), 3),
                     "clip_benchmark_best_s": round(min(theirs_wall), 2), "mmpretrain_best_s": round(min(ours_wall), 2),
                     "ratio_best": round(min(ours_wall) / min(theirs_wall), 3),
                     "ratio_per_round": [round(o / t, 3) for o, t in zip(ours_wall, theirs_wall)]},
            "pairs": pairs}


def markdown(summary: dict[str, Any], report: dict[str, Any]) -> str:
    model = report["model"]
    lines = [f"{report['checkpoints']} checkpoints of {model['name']} ({model['params_m']} M params, image tower "
             f"{model['image_params_m']} M, {model['image_gflops']} GFLOPs/image at {model['image_size']} px) x "
             f"3 sets of {report['args']['images']} images ({report['args']['image_format']}); "
             f"batch {report['args']['batch_size']}, {report['args']['workers']} workers, device "
             f"{report['args']['device']}, fp32; median of {len(report['rounds'])} round(s) (per round: "
             f"{', '.join(f'{x:.2f}' for x in summary['wall']['ratio_per_round'])})",
             "",
             "| model / dataset | clip_benchmark (s) | mmpretrain (s) | mmpretrain / clip_benchmark |",
             "|---|---:|---:|---:|"]
    for pair, row in summary["pairs"].items():
        lines.append(f"| {pair} | {row['clip_benchmark_s']:.1f} | {row['mmpretrain_s']:.1f} | {row['ratio']:.2f} |")
    wall = summary["wall"]
    lines.append(f"| **whole invocation (wall)** | {wall['clip_benchmark_s']:.1f} | {wall['mmpretrain_s']:.1f} | "
                 f"**{wall['ratio']:.2f}** |")
    lines.append(f"| whole invocation, best round | {wall['clip_benchmark_best_s']:.1f} | "
                 f"{wall['mmpretrain_best_s']:.1f} | {wall['ratio_best']:.2f} |")
    agreement = report["metrics_agreement"]
    lines += ["", f"metrics: {agreement['metrics_compared']} compared per round, max |diff| "
                  f"{agreement['max_abs_diff']:.2e}, {'all agree' if agreement['agree'] else 'DISAGREE'} "
                  f"(tolerance {TOLERANCE})"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="images per dataset (default 1000)")
    parser.add_argument("--checkpoints", type=int, default=3, help="checkpoints of the architecture (default 3)")
    parser.add_argument("--model-name", default=BENCH_MODEL, help=f"open_clip config (default {BENCH_MODEL})")
    parser.add_argument("--fit-images", type=int, default=300,
                        help="images to fit each checkpoint's image projection on (0: plain random init)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, both sides (default 2)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cpu hides GPUs from clip_benchmark (CUDA_VISIBLE_DEVICES=''); cuda: both on the GPU")
    parser.add_argument("--image-format", default="webp", choices=["webp", "png", "jpg"],
                        help="clip_benchmark's writer's format (default its default: lossless webp)")
    parser.add_argument("--shards", type=int, default=4,
                        help="shards per dataset (default 4; clip_benchmark fails with fewer shards than workers)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmpretrain-benchmark-speed"),
                        help="datasets and checkpoints (reused) and each round's outputs")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "benchmark_speed.json")
    # Inside a side's subprocess
    parser.add_argument("--side", choices=["clip_benchmark", "mmpretrain"], help=argparse.SUPPRESS)
    parser.add_argument("--config-dir", help=argparse.SUPPRESS)
    parser.add_argument("--timings", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if args.side == "clip_benchmark":
        return side_clip_benchmark(args.config_dir, args.timings, rest)
    if args.side == "mmpretrain":
        return side_mmpretrain(args.config_dir, rest)

    global _DEVICE
    _DEVICE = args.device
    workdir = args.workdir.resolve()
    config_dir = prepare_configs(workdir)
    datasets = prepare_data(workdir, args)
    models = prepare_models(workdir, config_dir, args)
    stats = model_stats(args.model_name, config_dir)
    suite = write_suite(workdir, datasets)
    print(f"model: {stats}\ndatasets: {datasets}", flush=True)

    rounds = []
    for index in range(args.rounds):
        round_dir = workdir / "rounds" / str(index)
        shutil.rmtree(round_dir, ignore_errors=True)
        order = ["clip_benchmark", "mmpretrain"] if index % 2 == 0 else ["mmpretrain", "clip_benchmark"]
        result: dict[str, Any] = {"order": order}
        for side in order:
            print(f"round {index + 1}/{args.rounds}: {side} ...", flush=True)
            if side == "clip_benchmark":
                result[side] = run_clip_benchmark(round_dir, config_dir, datasets, models, args)
            else:
                result[side] = run_mmpretrain(round_dir, config_dir, suite, models, args)
            print(f"  {result[side]['wall']:.1f} s (load {result[side]['load_before']} -> "
                  f"{result[side]['load_after']})", flush=True)
        result["metrics_agreement"] = compare_metrics(result["clip_benchmark"], result["mmpretrain"])
        rounds.append(result)

    agreement = {"metrics_compared": sum(r["metrics_agreement"]["metrics_compared"] for r in rounds) // len(rounds),
                 "max_abs_diff": max(r["metrics_agreement"]["max_abs_diff"] for r in rounds),
                 "agree": all(r["metrics_agreement"]["agree"] for r in rounds),
                 "failures": [f for r in rounds for f in r["metrics_agreement"]["failures"]]}
    summary = summarise(rounds)
    import torch
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "note": "load averages before/after each side are in rounds[*].<side>.load_before/after"},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k not in ("side", "config_dir", "timings", "rest")},
        "checkpoints": len(models),
        "model": stats,
        "datasets": datasets,
        "summary": summary,
        "metrics_agreement": agreement,
        "rounds": rounds,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print()
    print(markdown(summary, report))
    print(f"\nwritten: {args.json}")
    return 0 if agreement["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
