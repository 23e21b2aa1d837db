"""Reading the report's inputs: training run directories and benchmark output directories.

Everything here is read defensively: these files are written by long jobs that can be killed mid-line, by other
versions of the tools, or by hand. A part that cannot be read becomes a note shown on the page, never an exception;
only a path that is not an input at all (or does not exist) is an error, reported in one line by the CLI."""

from __future__ import annotations

import base64
import binascii
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from mmpretrain.errors import ConfigError
from mmpretrain.report.names import safe_name

METRICS_FILE = "metrics.jsonl"    # a training run's log: one JSON object per logged step
RUN_CONFIG = "config.yaml"
RUN_RESULTS = ("results.json", "eval_results.json")  # final eval (train), `mmpretrain eval RUN` (default --out)
BENCH_RESULTS = "results.jsonl"   # `mmpretrain benchmark`: one JSON object per (model, task)
BENCH_MISSING = "missing.json"
BENCH_DETAILS = "details"

# A page lists at most this many notes per file: a log with a thousand cut lines needs one line saying so, not 1000.
_MAX_NOTES_PER_FILE = 5

Series = list[tuple[int, float]]  # (step, value), sorted by step


@dataclass
class RunInput:
    """A training run directory: its metric series, final results and whatever could not be read."""

    path: Path
    name: str
    summary: dict[str, str]            # a few config values worth showing (model, loss, steps, batch size)
    series: dict[str, Series]          # every numeric metrics.jsonl key over steps
    results: dict[str, dict[str, float]]  # file name -> flat final metrics ("zeroshot/digits/top1": 0.95)
    notes: list[str] = field(default_factory=list)


@dataclass
class BenchmarkRow:
    model: str
    task: str
    task_type: str                     # zeroshot_classification | zeroshot_retrieval | compositional | ...
    main_metric: Optional[str]
    main_value: Optional[float]
    metrics: dict[str, float]
    samples: Optional[int] = None
    skipped: Optional[int] = None
    seconds: Optional[float] = None


@dataclass
class ZeroshotDetail:
    classnames: list[str]
    confusion: list[list[int]]         # rows: true class, columns: predicted


@dataclass
class RetrievalQuery:
    text: str
    top: list[str]
    correct: list[str]


@dataclass
class Thumbnail:
    data: bytes
    extension: str                     # png | jpg | gif | webp: what the bytes are, checked by their magic number


@dataclass
class RetrievalDetail:
    modality: str                      # image | audio
    queries: list[RetrievalQuery]
    thumbnails: dict[str, Thumbnail]


Detail = Union[ZeroshotDetail, RetrievalDetail]


@dataclass
class BenchmarkInput:
    """A `mmpretrain benchmark` output directory (see docs/BENCHMARKING.md, "Report", for the layout)."""

    path: Path
    models: list[str]                  # in order of first appearance in results.jsonl
    tasks: list[str]
    rows: dict[tuple[str, str], BenchmarkRow]   # (model, task) -> the last line for it
    missing: dict[str, str]            # task -> why its data were absent
    details: dict[tuple[str, str], Detail]
    suites: list[str]
    notes: list[str] = field(default_factory=list)


Input = Union[RunInput, BenchmarkInput]


def number(value: Any) -> Optional[float]:
    """A metric value as a float, or None. Accepts the strings "nan", "inf" and "-inf": metrics.jsonl writes a value
    that is not finite that way (engine/metrics.json_safe) so that the file stays strict JSON. Booleans are not
    numbers here, though Python says they are."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON objects of a JSON-lines file, in order, and notes on the lines that are not one (skipped).

    A run killed mid-write leaves a last line cut short; a disk that filled up can leave one in the middle. Bytes
    that are not UTF-8 are replaced, so such a line fails as JSON rather than the whole file failing to decode."""
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for number_, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                bad.append(number_)
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad.append(number_)
    notes = []
    if bad:
        more = ", ..." if len(bad) > _MAX_NOTES_PER_FILE else ""
        shown = ", ".join(str(n) for n in bad[:_MAX_NOTES_PER_FILE]) + more
        notes.append(f"{path.name}: skipped {len(bad)} line(s) that are not a JSON object (cut short by a kill?): "
                     f"line {shown}")
    return records, notes


def step_series(records: list[dict[str, Any]]) -> tuple[dict[str, Series], list[str]]:
    """Every numeric key of the records as a series over `step`, and notes on records without a usable step.

    A resumed run logs again the steps after its checkpoint, so a step can appear twice: the later line wins (it is
    the run that went on), which keeps each curve a function of the step instead of a zigzag."""
    by_key: dict[str, dict[int, float]] = {}
    without_step = 0
    for record in records:
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            without_step += 1
            continue
        for key, raw in record.items():
            value = number(raw)
            if key in ("step", "time") or value is None:
                continue
            by_key.setdefault(key, {})[step] = value
    notes = [f"{METRICS_FILE}: skipped {without_step} record(s) without an integer step"] if without_step else []
    return {key: sorted(points.items()) for key, points in sorted(by_key.items())}, notes


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError as e:
        notes.append(f"{path.name}: not valid JSON ({e}), not shown")
    except OSError as e:
        notes.append(f"{path.name}: cannot be read ({e.strerror or e}), not shown")
    return None


def _flat_metrics(data: Any) -> Optional[dict[str, float]]:
    """A {"kind/task/metric": number} object as floats, or None if `data` is not such an object."""
    if not isinstance(data, dict):
        return None
    values = {str(key): number(value) for key, value in data.items()}
    return {key: value for key, value in values.items() if value is not None}


def _config_summary(path: Path, notes: list[str]) -> tuple[Optional[str], dict[str, str]]:
    """The run name and a few headline values of a run's config.yaml (the page is not a config viewer)."""
    if not path.is_file():
        notes.append(f"{RUN_CONFIG}: absent")
        return None, {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except yaml.YAMLError as e:
        notes.append(f"{RUN_CONFIG}: not valid YAML ({str(e).splitlines()[0]})")
        return None, {}
    if not isinstance(config, dict):
        notes.append(f"{RUN_CONFIG}: not a mapping")
        return None, {}

    def get(*keys: str) -> Any:
        node: Any = config
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    wanted = {"model": ("model", "name"), "towers": ("model", "towers"), "loss": ("loss", "name"),
              "steps": ("train", "steps"), "batch size": ("data", "batch_size"), "lr": ("optim", "lr")}
    summary = {label: ", ".join(map(str, value)) if isinstance(value, list) else str(value)
               for label, keys in wanted.items() if (value := get(*keys)) is not None}
    name = config.get("run_name")
    return (str(name) if name is not None else None), summary


def read_run(path: Path) -> RunInput:
    notes: list[str] = []
    name, summary = _config_summary(path / RUN_CONFIG, notes)
    series: dict[str, Series] = {}
    metrics = path / METRICS_FILE
    if metrics.is_file():
        records, read_notes = read_jsonl(metrics)
        series, series_notes = step_series(records)
        notes += read_notes + series_notes
        if not records:
            notes.append(f"{METRICS_FILE}: no metrics logged yet")
    else:
        notes.append(f"{METRICS_FILE}: absent (no step logged yet?)")
    results = {}
    for file_name in RUN_RESULTS:
        if (path / file_name).is_file():
            flat = _flat_metrics(_read_json(path / file_name, notes))
            if flat is not None:
                results[file_name] = flat
            elif (path / file_name).stat().st_size:
                notes.append(f"{file_name}: not a JSON object of metrics, not shown")
    return RunInput(path=path, name=name or path.resolve().name, summary=summary, series=series, results=results,
                    notes=notes)


def _row(record: dict[str, Any]) -> Optional[BenchmarkRow]:
    """One results.jsonl line as a row, or None when it names no model or task."""
    model, task = record.get("model"), record.get("dataset")
    if not isinstance(model, str) or not isinstance(task, str):
        return None
    metrics = _flat_metrics(record.get("metrics")) or {}
    ours = record.get("mmpretrain") if isinstance(record.get("mmpretrain"), dict) else {}
    main_metric = ours.get("main_metric") if isinstance(ours.get("main_metric"), str) else None
    main_value = number(ours.get("main_value"))
    if main_value is None:
        # A CLIP_benchmark line without our block: its headline metric, where it has one.
        main_metric = main_metric if main_metric in metrics else ("acc1" if "acc1" in metrics else None)
        main_value = metrics.get(main_metric) if main_metric else None

    def count(key: str) -> Optional[int]:
        value = number(ours.get(key))
        return int(value) if value is not None and math.isfinite(value) else None

    return BenchmarkRow(model=model, task=task, task_type=str(record.get("task", "")), main_metric=main_metric,
                        main_value=main_value, metrics=metrics, samples=count("samples"), skipped=count("skipped"),
                        seconds=number(ours.get("seconds")))


def _zeroshot_detail(data: dict[str, Any]) -> Optional[ZeroshotDetail]:
    names, confusion = data.get("classnames"), data.get("confusion")
    if not isinstance(names, list) or not isinstance(confusion, list) or len(confusion) != len(names) or not names:
        return None
    rows = []
    for row in confusion:
        if not isinstance(row, list) or len(row) != len(names):
            return None
        values = [number(v) for v in row]
        if any(v is None or not math.isfinite(v) or v < 0 for v in values):
            return None
        rows.append([int(v) for v in values])  # type: ignore[arg-type]
    return ZeroshotDetail(classnames=[str(n) for n in names], confusion=rows)


_IMAGE_MAGIC = {"png": (b"\x89PNG\r\n\x1a\n",), "jpg": (b"\xff\xd8\xff",), "gif": (b"GIF87a", b"GIF89a")}


def decode_thumbnail(uri: Any) -> Optional[Thumbnail]:
    """A `data:image/...;base64,...` URI as image bytes, or None unless it is one and the bytes are a PNG, JPEG, GIF
    or WebP. The page links the decoded file, never the given string: what lands in an <img src> is then ours."""
    if not isinstance(uri, str) or not uri.startswith("data:image/") or ";base64," not in uri:
        return None
    try:
        data = base64.b64decode(uri.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    for extension, magics in _IMAGE_MAGIC.items():
        if data.startswith(magics):
            return Thumbnail(data=data, extension=extension)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return Thumbnail(data=data, extension="webp")
    return None


def _keys(value: Any) -> Optional[list[str]]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        return None
    return [str(v) for v in value]


def _retrieval_detail(data: dict[str, Any], notes: list[str], where: str) -> Optional[RetrievalDetail]:
    modality = data.get("modality", "image")
    queries_data = data.get("queries")
    if modality not in ("image", "audio") or not isinstance(queries_data, list):
        return None
    queries = []
    for query in queries_data:
        if not isinstance(query, dict) or not isinstance(query.get("text"), str):
            continue
        top, correct = _keys(query.get("top")), _keys(query.get("correct", []))
        if top is None or correct is None:
            continue
        queries.append(RetrievalQuery(text=query["text"], top=top, correct=correct))
    if len(queries) < len(queries_data):
        notes.append(f"{where}: skipped {len(queries_data) - len(queries)} query(ies) without text and top keys")
    thumbnails: dict[str, Thumbnail] = {}
    raw = data.get("thumbnails")
    if modality == "image" and isinstance(raw, dict):
        bad = 0
        for key, uri in raw.items():
            thumbnail = decode_thumbnail(uri)
            if thumbnail is None:
                bad += 1
            else:
                thumbnails[str(key)] = thumbnail
        if bad:
            notes.append(f"{where}: {bad} thumbnail(s) are not a base64 PNG/JPEG/GIF/WebP data URI; their keys are "
                         f"shown instead")
    return RetrievalDetail(modality=modality, queries=queries, thumbnails=thumbnails)


def read_detail(path: Path, notes: list[str]) -> Optional[Detail]:
    """details/<model>/<task>.json, or None (with a note) when it cannot be used."""
    where = f"{path.parent.parent.name}/{path.parent.name}/{path.name}"
    data = _read_json(path, notes)
    if data is None:
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    detail: Optional[Detail] = None
    if kind == "zeroshot":
        detail = _zeroshot_detail(data)
    elif kind == "retrieval":
        detail = _retrieval_detail(data, notes, where)
    if detail is None:
        notes.append(f"{where}: not a zero-shot ({{classnames, square confusion}}) or retrieval ({{modality, "
                     f"queries}}) detail, not shown")
    return detail


def read_benchmark(path: Path) -> BenchmarkInput:
    records, notes = read_jsonl(path / BENCH_RESULTS)
    rows: dict[tuple[str, str], BenchmarkRow] = {}
    # Models and tasks keep the order they were first run in, which is the order the suite lists them.
    models_seen: dict[str, None] = {}
    tasks_seen: dict[str, None] = {}
    unnamed = 0
    for record in records:
        row = _row(record)
        if row is None:
            unnamed += 1
            continue
        rows[(row.model, row.task)] = row  # a later line replaces an earlier one (a re-run of that task)
        models_seen.setdefault(row.model)
        tasks_seen.setdefault(row.task)
    if unnamed:
        notes.append(f"{BENCH_RESULTS}: skipped {unnamed} line(s) without a \"model\" and a \"dataset\" string")
    models, tasks = list(models_seen), list(tasks_seen)
    missing: dict[str, str] = {}
    if (path / BENCH_MISSING).is_file():
        data = _read_json(path / BENCH_MISSING, notes)
        if isinstance(data, dict):
            missing = {str(task): str(why) for task, why in data.items()}
        elif data is not None:
            notes.append(f"{BENCH_MISSING}: not a {{task: reason}} object, not shown")
    by_safe: dict[str, list[str]] = {}
    for model in models:
        by_safe.setdefault(safe_name(model), []).append(model)
    for folder, labels in by_safe.items():
        if len(labels) > 1:
            notes.append(f"models {', '.join(map(repr, labels))} share the details folder {folder!r}: their "
                         f"details are not shown")
    details: dict[tuple[str, str], Detail] = {}
    for (model, task) in rows:
        file = path / BENCH_DETAILS / safe_name(model) / f"{safe_name(task)}.json"
        if len(by_safe[safe_name(model)]) == 1 and file.is_file():
            detail = read_detail(file, notes)
            if detail is not None:
                details[(model, task)] = detail
    suites = sorted({str(suite) for record in records
                     if isinstance(record.get("mmpretrain"), dict) and (suite := record["mmpretrain"].get("suite"))})
    return BenchmarkInput(path=path, models=models, tasks=tasks, rows=rows, missing=missing, details=details,
                          suites=suites, notes=notes)


def read_input(path: Path) -> Input:
    """A run or benchmark directory, told apart by its files. Raises FileNotFoundError or ConfigError (one line)."""
    if not path.exists():
        raise FileNotFoundError(f"report input {path} does not exist")
    is_run = path.is_dir() and ((path / METRICS_FILE).is_file() or (path / RUN_CONFIG).is_file())
    is_benchmark = path.is_dir() and (path / BENCH_RESULTS).is_file()
    if is_run and is_benchmark:
        raise ConfigError(f"report input {path} has both {METRICS_FILE} / {RUN_CONFIG} (a training run) and "
                          f"{BENCH_RESULTS} (a benchmark output): give a directory that is one of them")
    if is_run:
        return read_run(path)
    if is_benchmark:
        return read_benchmark(path)
    raise ConfigError(f"report input {path} is neither a training run directory ({METRICS_FILE} or {RUN_CONFIG}) "
                      f"nor a benchmark output directory ({BENCH_RESULTS})")
