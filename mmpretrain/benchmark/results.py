"""Benchmark results on disk: one JSON line per (model, task) in CLIP_benchmark's result schema, our flat
`results.json` per model, and a model x task table (CSV and Markdown) with the average over the suite.

    OUT/results.jsonl                 {"dataset", "model", "pretrained", "task", "metrics", "language"} + "mmpretrain"
    OUT/models/<label>/results.json   {"zeroshot/<task>/top1": ..., "retrieval/<task>/image_to_text_R@1": ...}
    OUT/table.csv, OUT/table.md       main metric per task, and the average (DataComp's: the mean over tasks)
    OUT/missing.json                  {"<task>": "why"} for tasks whose data are absent
    OUT/details/<label>/<task>.json   confusion matrix (zero-shot) or a retrieval gallery, for `mmpretrain report`

results.jsonl is the resume state: a line is appended (flushed and fsynced) as soon as a (model, task) pair is
scored, so a killed run loses at most the pairs in flight, and a rerun skips every pair with a line. A torn last
line (killed mid-write) is ignored. A later line for the same pair replaces an earlier one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmpretrain.engine.checkpoint import write_atomically
from mmpretrain.report.names import safe_name  # the one rule the report uses to find details folders

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
# CLIP_benchmark's task names (its result files' "task" field)
CB_TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval",
            "compositional": "compositional"}


def clip_benchmark_metrics(kind: str, flat: Mapping[str, float]) -> dict[str, float]:
    """Our metric names -> CLIP_benchmark's: top1 -> acc1, image_to_text_R@k -> text_retrieval_recall@k (images
    query texts), text_to_image_R@k -> image_retrieval_recall@k; retrieval also gets DataComp's mean_recall@1."""
    if kind == "zeroshot":
        names = {"top1": "acc1", "top5": "acc5", "mean_per_class_recall": "mean_per_class_recall"}
        return {names[k]: v for k, v in flat.items() if k in names}
    if kind == "retrieval":
        out: dict[str, float] = {}
        for key, value in flat.items():
            match = re.fullmatch(r"(image_to_text|text_to_image)_R@(\d+)", key)
            if match:
                which = "text" if match.group(1) == "image_to_text" else "image"
                out[f"{which}_retrieval_recall@{match.group(2)}"] = value
        if "image_retrieval_recall@1" in out and "text_retrieval_recall@1" in out:
            out["mean_recall@1"] = (out["image_retrieval_recall@1"] + out["text_retrieval_recall@1"]) / 2
        return out
    return {k: v for k, v in flat.items() if k not in ("skipped", "failed")}


def result_line(model_label: str, spec: str, task_name: str, kind: str, flat: Mapping[str, float],
                main_metric: str, suite: str, samples: int, skipped: int, seconds: float) -> dict[str, Any]:
    metrics = clip_benchmark_metrics(kind, flat)
    main_value = metrics.get(main_metric)
    return {"dataset": task_name, "model": model_label, "pretrained": spec, "task": CB_TASKS[kind],
            "metrics": metrics, "language": "en",
            "mmpretrain": {"suite": suite, "kind": kind, "main_metric": main_metric, "main_value": main_value,
                           "samples": samples, "skipped": skipped, "seconds": round(seconds, 3),
                           "flat": {f"{kind}/{task_name}/{k}": float(v) for k, v in flat.items()}}}


def append_line(out: Path, line: Mapping[str, Any]) -> None:
    """Append one result line durably (the resume state)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / RESULTS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_lines(out: Path) -> list[dict[str, Any]]:
    """The result lines so far, the last per (model, task); a torn or foreign line is skipped with a warning."""
    path = out / RESULTS_FILE
    if not path.is_file():
        return []
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for number, text in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            latest[(str(line["model"]), str(line["dataset"]))] = line
        except (ValueError, KeyError, TypeError):
            log.warning("%s line %d is not a result line (a run killed mid-write?): ignored", path, number)
    return list(latest.values())


def drop_torn_line(out: Path) -> None:
    """Cut a last line left without its newline by a killed run, so that the next append starts a line of its
    own instead of joining it (which would lose both)."""
    path = out / RESULTS_FILE
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    log.warning("%s: dropping a torn last line (%d bytes; a run killed mid-write)", path, len(data) - keep)
    with open(path, "r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())


def done_pairs(out: Path) -> set[tuple[str, str]]:
    return {(line["model"], line["dataset"]) for line in read_lines(out)}


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    _atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def table_rows(lines: Sequence[Mapping[str, Any]], models: Sequence[str], tasks: Sequence[str]
               ) -> list[dict[str, Any]]:
    """Per model: its main value per task (None where absent) and the average over the tasks it has."""
    value = {(l["model"], l["dataset"]): l.get("mmpretrain", {}).get("main_value") for l in lines}
    rows = []
    for model in models:
        cells = {task: value.get((model, task)) for task in tasks}
        present = [v for v in cells.values() if isinstance(v, (int, float))]
        rows.append({"model": model, **cells, "average": sum(present) / len(present) if present else None,
                     "tasks": len(present)})
    return rows


def write_tables(out: Path, models: Sequence[str], tasks: Sequence[str], main_metrics: Mapping[str, str]) -> None:
    """table.csv and table.md from results.jsonl (every line so far, this run's or an earlier one's)."""
    lines = read_lines(out)
    known_models = list(dict.fromkeys([*models, *(l["model"] for l in lines)]))
    rows = table_rows(lines, known_models, tasks)
    csv_text = io.StringIO()
    writer = csv.writer(csv_text)
    writer.writerow(["model", *tasks, "average", "tasks"])
    for row in rows:
        writer.writerow([row["model"], *(_cell(row[t]) for t in tasks), _cell(row["average"]), row["tasks"]])
    _atomic_write(out / "table.csv", csv_text.getvalue())
    header = ["model", *(f"{t} ({main_metrics.get(t, '')})" for t in tasks), f"average (of {len(tasks)})"]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        avg = _cell(row["average"], 3)
        md.append("| " + " | ".join([row["model"], *(_cell(row[t], 3) or "–" for t in tasks),
                                     f"{avg} ({row['tasks']})" if avg else "–"]) + " |")
    _atomic_write(out / "table.md", "\n".join(md) + "\n")


def write_model_results(out: Path, models: Iterable[str]) -> None:
    """models/<label>/results.json: the flat metrics of every task of that model so far."""
    lines = read_lines(out)
    for model in models:
        flat: dict[str, float] = {}
        for line in lines:
            if line["model"] == model:
                flat.update(line.get("mmpretrain", {}).get("flat", {}))
        write_json(out / "models" / safe_name(model) / "results.json", flat)


def _cell(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else ""
