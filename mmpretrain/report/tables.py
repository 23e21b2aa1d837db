"""What the page shows, computed from the inputs: which curves go in which panel, eval series per task, the heat
table's cells and averages, the confusion classes worth showing. Pure functions, no plotting, no HTML."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from mmpretrain.report.inputs import BenchmarkInput, Series

EVAL_PREFIX = "eval/"


@dataclass(frozen=True)
class Panel:
    """One training-curve plot: a title, a y label and the series drawn in it (label -> series)."""

    slug: str                          # its PNG's file name stem
    title: str
    ylabel: str
    curves: dict[str, Series]
    counts: bool = False               # whole numbers from 0: an all-zero skip curve must not get a -0.04 axis
    first_colour: int = 0              # each pair keeps its colour from the loss panel (where "total" is first)


def _with_prefix(series: dict[str, Series], prefix: str, suffix: str) -> dict[str, Series]:
    return {key: values for key, values in series.items() if key.startswith(prefix) and key.endswith(suffix)
            and len(key) > len(prefix) + len(suffix)}


def training_panels(series: dict[str, Series]) -> tuple[list[Panel], list[str]]:
    """The training-curve panels that have data, and the names of those that have none (said on the page)."""
    pair_losses = {f"pair {key.split('/')[1]}": v for key, v in _with_prefix(series, "pair/", "/loss").items()}
    pair_scales = {f"pair {key.split('/')[1]}": v
                   for key, v in _with_prefix(series, "pair/", "/logit_scale").items()}
    skip_reasons = {key.removeprefix("data/"): v for key, v in _with_prefix(series, "data/skipped/", "").items()}
    if len(skip_reasons) == 1:
        skip_reasons = {}  # one reason's curve is the total's: drawn over it, it would hide it
    wanted = [
        # The total loss with each pair's beside it: a multi-pair run's total hides which pair is not learning.
        Panel("loss", "Loss", "loss", {**({"total": series["loss"]} if "loss" in series else {}), **pair_losses}),
        Panel("lr", "Learning rate", "lr", {"lr": series["lr"]} if "lr" in series else {}),
        # The logged logit_scale is the first pair's (objective.py); with several pairs each one's is drawn instead.
        Panel("logit_scale", "Logit scale", "scale", pair_scales, first_colour=1) if len(pair_scales) > 1 else
        Panel("logit_scale", "Logit scale", "scale",
              {"logit_scale": series["logit_scale"]} if "logit_scale" in series else pair_scales),
        Panel("samples_per_s", "Throughput", "samples/s",
              {"samples/s": series["samples_per_s"]} if "samples_per_s" in series else {}),
        Panel("skips", "Skips", "count",
              {**{label: series[key] for key, label in (("data/skipped", "samples skipped"),
                                                        ("train/skipped_steps", "steps skipped")) if key in series},
               **skip_reasons}, counts=True),
    ]
    return [p for p in wanted if p.curves], [p.title for p in wanted if not p.curves]


def eval_series(series: dict[str, Series]) -> dict[str, dict[str, Series]]:
    """`eval/<kind>/<task>/<metric>` series grouped by "<kind>/<task>", metric -> series, skip counts left out (they
    are counts among fractions; non-zero ones are listed by `eval_skips`)."""
    tasks: dict[str, dict[str, Series]] = {}
    for key, values in series.items():
        parts = key.removeprefix(EVAL_PREFIX).split("/")
        if not key.startswith(EVAL_PREFIX) or len(parts) < 3 or parts[-1] in ("skipped", "failed"):
            continue
        tasks.setdefault("/".join(parts[:-1]), {})[parts[-1]] = values
    return {task: dict(sorted(metrics.items(), key=lambda item: natural_key(item[0])))
            for task, metrics in tasks.items()}


def eval_skips(series: dict[str, Series]) -> dict[str, float]:
    """Eval tasks that skipped samples (their largest count over the run), "<kind>/<task>" -> count."""
    skips = {}
    for key, values in series.items():
        if key.startswith(EVAL_PREFIX) and key.endswith("/skipped"):
            worst = max((v for _, v in values if math.isfinite(v)), default=0.0)
            if worst > 0:
                skips[key.removeprefix(EVAL_PREFIX).removesuffix("/skipped")] = worst
    return skips


@dataclass(frozen=True)
class ResultsTable:
    """Final results of one kind (zeroshot, retrieval, ...). Wide (tasks as rows, metrics as columns) when its
    tasks share their metric names; else long, one (task, metric) per row: retrieval tasks name their metrics by
    their modalities (image_to_text_R@1, audio_to_image_class_R@1), and a wide table of them is mostly gaps."""

    kind: str
    metrics: list[str]                 # wide: the columns; long: empty
    rows: list[tuple[str, list[Optional[float]]]]          # wide: (task, value per metric)
    long_rows: list[tuple[str, list[tuple[str, float]]]]   # long: (task, [(metric, value)])


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that reads the numbers in names as numbers: R@1, R@5, R@10 (not R@1, R@10, R@5)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part)


def _metric_order(metric: str) -> tuple[bool, tuple[tuple[int, int | str], ...]]:
    return metric in ("skipped", "failed"), natural_key(metric)  # counts last


def results_tables(flat: dict[str, float]) -> list[ResultsTable]:
    """A flat `{"<kind>/<task>/<metric>": value}` dict as one table per kind; keys of another shape go in "other"."""
    grouped: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in sorted(flat.items()):
        parts = key.split("/")
        if len(parts) >= 3:
            kind, task, metric = parts[0], "/".join(parts[1:-1]), parts[-1]
        else:
            kind, task, metric = "other", key, "value"
        grouped.setdefault(kind, {}).setdefault(task, {})[metric] = value
    tables = []
    for kind, tasks in grouped.items():
        metric_sets = {frozenset(values) for values in tasks.values()}
        if len(metric_sets) == 1:
            metrics = sorted(next(iter(metric_sets)), key=_metric_order)
            tables.append(ResultsTable(kind, metrics, [(task, [values.get(m) for m in metrics])
                                                       for task, values in tasks.items()], []))
        else:
            long_rows = [(task, [(m, values[m]) for m in sorted(values, key=_metric_order)])
                         for task, values in tasks.items()]
            tables.append(ResultsTable(kind, [], [], long_rows))
    return tables


@dataclass(frozen=True)
class HeatCell:
    value: Optional[float]
    text: str
    background: str                    # CSS colour
    foreground: str


def heat_colour(value: Optional[float]) -> tuple[str, str]:
    """Background and text colour for a main-metric value in [0, 1]: white (0) to a saturated blue (1), dark text on
    light cells and white on dark ones. A CSS colour computed here, so the page needs no script."""
    if value is None or not math.isfinite(value):
        return "#f2f2f2", "#777777"
    t = min(max(value, 0.0), 1.0)
    low, high = (247, 251, 255), (8, 69, 148)  # ColorBrewer Blues' ends
    r, g, b = (round(lo + (hi - lo) * t) for lo, hi in zip(low, high))
    return f"#{r:02x}{g:02x}{b:02x}", ("#ffffff" if t > 0.55 else "#111111")


def format_value(value: Optional[float], digits: int = 4) -> str:
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def format_metric(metric: str, value: Optional[float]) -> str:
    """A final-results cell: a skip count is a number of samples ("3"), not "3.0000" beside the fractions."""
    if value is not None and math.isfinite(value) and metric in ("skipped", "failed"):
        return f"{value:,.0f}"
    return format_value(value)


def heat_rows(bench: BenchmarkInput) -> list[tuple[str, list[HeatCell], HeatCell, str]]:
    """Per model: its cells in task order, its average cell, and a note when the average covers fewer tasks than
    the table has (an average over other tasks is not comparable, so the page says which)."""
    rows = []
    for model in bench.models:
        values = [bench.rows[(model, task)].main_value if (model, task) in bench.rows else None
                  for task in bench.tasks]
        cells = [HeatCell(v, format_value(v, 3), *heat_colour(v)) for v in values]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        average = sum(finite) / len(finite) if finite else None
        note = "" if len(finite) == len(bench.tasks) else f"over {len(finite)} of {len(bench.tasks)} tasks"
        rows.append((model, cells, HeatCell(average, format_value(average, 3), *heat_colour(average)), note))
    return rows


def confused_classes(confusion: list[list[int]], cap: int) -> list[int]:
    """Indices of at most `cap` classes to show, in their original order: all of them when they fit, else those
    most involved in mistakes (their row's and column's counts off the diagonal), so the picture shows confusions
    rather than the diagonal of a thousand well-learned classes."""
    n = len(confusion)
    if n <= cap:
        return list(range(n))
    involvement = [sum(confusion[i]) - confusion[i][i] + sum(row[i] for row in confusion) - confusion[i][i]
                   for i in range(n)]
    chosen = sorted(range(n), key=lambda i: (-involvement[i], i))[:cap]
    return sorted(chosen)


def top_confusions(classnames: list[str], confusion: list[list[int]], limit: int = 10) -> list[tuple[str, str, int]]:
    """The most frequent mistakes as (true class, predicted class, count), largest first."""
    pairs = [(count, i, j) for i, row in enumerate(confusion) for j, count in enumerate(row) if i != j and count > 0]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return [(classnames[i], classnames[j], count) for count, i, j in pairs[:limit]]


def accuracy(confusion: list[list[int]]) -> Optional[float]:
    total = sum(map(sum, confusion))
    return sum(confusion[i][i] for i in range(len(confusion))) / total if total else None
