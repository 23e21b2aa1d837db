"""Small report inputs written by the tests: a training run directory and a `mmpretrain benchmark` output directory
in the layout of docs/BENCHMARKING.md ("Report"), each with the flaws the report must survive."""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

import yaml
from PIL import Image

from mmpretrain.report import safe_name

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 30), "blue": (30, 30, 220), "yellow": (230, 210, 20),
           "purple": (140, 40, 170), "orange": (245, 140, 20)}

# Labels with characters a folder name cannot hold, as model specs have them.
MODELS = ["ViT-B-32:openai", "hf-hub:timm/ViT-B-16-SigLIP", "runs/demo"]
ZEROSHOT_SMALL = "shapes-colour"      # 6 classes, every model
ZEROSHOT_LARGE = "many-classes"       # 40 classes: more than the confusion picture's cap
RETRIEVAL_IMAGE = "shapes-retrieval"
RETRIEVAL_AUDIO = "clips-retrieval"
COMPOSITIONAL = "sugar-crepe"         # results only, no details
MISSING = {"flickr30k": "no data at /data/flickr30k (download it with clip_benchmark)"}


def png_data_uri(rgb: tuple[int, int, int], size: int = 24) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_run(folder: Path, steps: int = 60, log_every: int = 10, eval_every: int = 20,
              garbage: bool = True) -> Path:
    """A two-pair run's metrics.jsonl (training lines and eval lines, as train.py writes them), config.yaml and
    results.json. With `garbage`: a line cut short in the middle, a non-object line and a cut last line."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "run_name": "tiny-run", "output_dir": str(folder.parent),
        "model": {"name": "mmp-tiny-rn", "towers": ["image", "text", "audio"]}, "loss": {"name": "clip"},
        "train": {"steps": steps}, "data": {"batch_size": 32}, "optim": {"lr": 1e-3}}))
    lines = []
    for step in range(log_every, steps + 1, log_every):
        lines.append(json.dumps({
            "step": step, "time": 1795597753.0 + step, "loss": 8.0 / (1 + step / 20), "lr": 1e-3 * min(1, step / 20),
            "logit_scale": 14.0 + step / 50, "samples_per_s": 250.0 + step % 7, "samples_seen": step * 32,
            "train/skipped_steps": 0, "data/skipped": float(step // 30), "data/skipped/decode_error": float(step // 30),
            "pair/image_text/loss": 3.0 / (1 + step / 20), "pair/image_text/logit_scale": 14.0 + step / 50,
            "pair/audio_text/loss": 5.0 / (1 + step / 30), "pair/audio_text/logit_scale": 14.0 - step / 80}))
        if step % eval_every == 0:
            accuracy = min(1.0, step / steps)
            lines.append(json.dumps({
                "step": step, "time": 1795597753.5 + step,
                "eval/zeroshot/digits/top1": accuracy, "eval/zeroshot/digits/top5": min(1.0, accuracy + 0.2),
                "eval/zeroshot/digits/mean_per_class_recall": accuracy, "eval/zeroshot/digits/skipped": 2.0,
                "eval/retrieval/shapes/image_to_text_R@1": accuracy / 2, "eval/retrieval/shapes/text_to_image_R@1":
                    accuracy / 3, "eval/retrieval/shapes/skipped": 0.0}))
    if garbage:
        lines.insert(2, '{"step": 25, "loss": 3.1, "lr"')   # a disk that filled up mid-line
        lines.insert(4, "[1, 2, 3]")                        # JSON, but not an object
        lines.append('{"step": 70, "time": 17955977')       # the kill
    (folder / "metrics.jsonl").write_text("\n".join(lines) + ("" if garbage else "\n"))
    (folder / "results.json").write_text(json.dumps({
        "zeroshot/digits/top1": 0.93, "zeroshot/digits/top5": 1.0, "zeroshot/digits/mean_per_class_recall": 0.92,
        "zeroshot/digits/skipped": 2.0, "retrieval/shapes/image_to_text_R@1": 0.8,
        "retrieval/shapes/text_to_image_R@1": 0.7, "retrieval/shapes/skipped": 0.0}, indent=2))
    return folder


def _result(model: str, task: str, kind: str, metrics: dict[str, float], main_metric: str) -> dict:
    return {"dataset": task, "model": model, "pretrained": model.split(":")[-1], "task": kind, "language": "en",
            "metrics": metrics,
            "mmpretrain": {"suite": "tiny-suite", "main_metric": main_metric, "main_value": metrics[main_metric],
                           "samples": 120, "skipped": 1, "seconds": 2.5,
                           "flat": {f"zeroshot/{task}/top1": metrics.get("acc1", 0.0)}}}


def _confusion(n: int, accuracy: float, rng: random.Random) -> list[list[int]]:
    matrix = [[0] * n for _ in range(n)]
    for true in range(n):
        for _ in range(20):
            matrix[true][true if rng.random() < accuracy else rng.randrange(n)] += 1
    return matrix


def write_benchmark(folder: Path, garbage: bool = True) -> Path:
    """Three models on five tasks (the last model lacks one), a missing task, zero-shot confusions (one over the
    picture's class cap), an image retrieval gallery with thumbnails and an audio one with clip names."""
    rng = random.Random(0)
    lines = []
    colours = list(COLOURS)
    for m, model in enumerate(MODELS):
        accuracy = 0.5 + 0.2 * m
        details = folder / "details" / safe_name(model)
        details.mkdir(parents=True, exist_ok=True)
        # Zero-shot, small: written first with a worse score, then replaced by a later line (a re-run).
        lines.append(_result(model, ZEROSHOT_SMALL, "zeroshot_classification",
                             {"acc1": 0.01, "acc5": 0.1, "mean_per_class_recall": 0.01}, "acc1"))
        lines.append(_result(model, ZEROSHOT_SMALL, "zeroshot_classification",
                             {"acc1": accuracy, "acc5": 1.0, "mean_per_class_recall": accuracy}, "acc1"))
        (details / f"{ZEROSHOT_SMALL}.json").write_text(json.dumps(
            {"kind": "zeroshot", "classnames": colours, "confusion": _confusion(len(colours), accuracy, rng)}))
        # Zero-shot, large.
        lines.append(_result(model, ZEROSHOT_LARGE, "zeroshot_classification",
                             {"acc1": accuracy - 0.1, "acc5": accuracy, "mean_per_class_recall": accuracy - 0.1},
                             "acc1"))
        (details / f"{ZEROSHOT_LARGE}.json").write_text(json.dumps(
            {"kind": "zeroshot", "classnames": [f"class {i:02d}" for i in range(40)],
             "confusion": _confusion(40, accuracy - 0.1, rng)}))
        # Image retrieval: key "img-<colour>" is a square of that colour; each query's correct one is its colour.
        lines.append(_result(model, RETRIEVAL_IMAGE, "zeroshot_retrieval",
                             {"image_retrieval_recall@1": accuracy, "text_retrieval_recall@1": accuracy - 0.05},
                             "image_retrieval_recall@1"))
        queries = []
        for q, colour in enumerate(colours[:4]):
            ranked = [f"img-{c}" for c in rng.sample(colours, len(colours))]
            if q % 2 == 0:  # half the queries find theirs first
                ranked.remove(f"img-{colour}")
                ranked.insert(0, f"img-{colour}")
            top = ranked[:5]
            queries.append({"text": f"a {colour} square <b>bold</b>", "top": top, "correct": [f"img-{colour}"]})
        (details / f"{RETRIEVAL_IMAGE}.json").write_text(json.dumps(
            {"kind": "retrieval", "modality": "image", "queries": queries,
             "thumbnails": {f"img-{c}": png_data_uri(rgb) for c, rgb in COLOURS.items()}}))
        # Audio retrieval: clip names only.
        if m < 2:
            lines.append(_result(model, RETRIEVAL_AUDIO, "zeroshot_retrieval",
                                 {"image_retrieval_recall@1": accuracy / 2, "text_retrieval_recall@1": accuracy / 3},
                                 "image_retrieval_recall@1"))
            (details / f"{RETRIEVAL_AUDIO}.json").write_text(json.dumps(
                {"kind": "retrieval", "modality": "audio",
                 "queries": [{"text": "a dog barks twice",
                              "top": ["dog_bark_01.flac", "rain_03.flac", "dog_bark_02.flac"],
                              "correct": ["dog_bark_02.flac"]},
                             {"text": "rain on a tin roof", "top": ["rain_03.flac", "wind_01.flac"],
                              "correct": ["rain_03.flac"]}]}))
        lines.append(_result(model, COMPOSITIONAL, "compositional", {"acc": 0.6 + 0.1 * m}, "acc"))
    text = [json.dumps(line) for line in lines]
    if garbage:
        text.insert(3, '{"dataset": "shapes-colour", "model": "ViT')   # a line cut short
        text.append('{"dataset": "sugar-crepe", "model": "runs/de')     # the kill
    (folder / "results.jsonl").write_text("\n".join(text) + "\n")
    (folder / "missing.json").write_text(json.dumps(MISSING))
    (folder / "table.csv").write_text("model,shapes-colour,average\n")  # present in real outputs, not read
    return folder
