"""The page: what each input's section holds (its plots drawn into the assets folder), rendered by jinja2.

Every string from the inputs (run names, model labels, class names, query texts, notes) reaches the HTML through
jinja2's autoescaping; the only things in `src` attributes are file names made here."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import jinja2

from mmpretrain.report import plots
from mmpretrain.report.inputs import (BenchmarkInput, Input, RetrievalDetail, RunInput, Thumbnail, ZeroshotDetail)
from mmpretrain.report.tables import (HeatCell, ResultsTable, accuracy, confused_classes, eval_series, eval_skips,
                                      format_metric, format_value, heat_rows, results_tables, top_confusions,
                                      training_panels)

ASSETS = "assets"
CONFUSION_CAP = 30       # classes in one confusion picture; beyond that the labels are unreadable
GALLERY_QUERIES = 12     # queries shown per retrieval task: "a few", the writer may store more
GALLERY_TOP = 10         # hits shown per query


@dataclass
class Picture:
    src: str                           # relative to the page: assets/<name>.png
    alt: str


@dataclass
class RunSection:
    anchor: str
    name: str
    path: str
    summary: dict[str, str]
    curves: list[Picture]
    no_curves: list[str]
    evals: list[Picture]
    eval_skips: dict[str, str]
    results: list[tuple[str, list[ResultsTable]]]
    notes: list[str]
    kind: str = "run"


@dataclass
class Confusion:
    model: str
    task: str
    picture: Picture
    accuracy: str
    capped: str                        # "" or what the cap left out
    top: list[tuple[str, str, int]]
    wide: bool                         # many classes: the picture gets the page's width, or its labels are unreadable


@dataclass
class Hit:
    rank: int
    key: str
    src: Optional[str]                 # the thumbnail, None for audio or a key without one
    correct: bool


@dataclass
class Query:
    text: str
    hits: list[Hit]
    correct_elsewhere: list[Hit]       # correct items not among the hits shown (rank 0: not shown)
    found: bool


@dataclass
class Gallery:
    model: str
    task: str
    modality: str
    queries: list[Query]
    capped: str


@dataclass
class BenchmarkSection:
    anchor: str
    path: str
    suites: list[str]
    tasks: list[str]
    heat: list[tuple[str, list[HeatCell], HeatCell, str]]
    heatmap: Optional[Picture]
    rows: list[dict[str, str]]
    missing: dict[str, str]
    confusions: list[Confusion]
    galleries: list[Gallery]
    notes: list[str]
    kind: str = "benchmark"


Section = Union[RunSection, BenchmarkSection]


@dataclass
class Assets:
    """Writes the page's files under <folder>/assets and hands back their page-relative names."""

    folder: Path
    thumbnails: dict[str, str] = field(default_factory=dict)   # digest -> src, one file per distinct image

    def __post_init__(self) -> None:
        (self.folder / ASSETS).mkdir(parents=True, exist_ok=True)

    def png(self, name: str) -> tuple[Path, str]:
        """Where to draw a plot called `name` (made here, from indices: never from labels) and its src."""
        return self.folder / ASSETS / f"{name}.png", f"{ASSETS}/{name}.png"

    def thumbnail(self, thumbnail: Thumbnail) -> str:
        digest = hashlib.sha256(thumbnail.data).hexdigest()[:20]
        if digest not in self.thumbnails:
            (self.folder / ASSETS / "thumbs").mkdir(exist_ok=True)
            name = f"{ASSETS}/thumbs/{digest}.{thumbnail.extension}"
            (self.folder / name).write_bytes(thumbnail.data)
            self.thumbnails[digest] = name
        return self.thumbnails[digest]


def _plot(assets: Assets, name: str, alt: str, draw: Callable[[Path], None]) -> Picture:
    """Draw a plot now (`draw(path)`) and return how the page shows it."""
    path, src = assets.png(name)
    draw(path)
    return Picture(src=src, alt=alt)


def run_section(run: RunInput, index: int, assets: Assets) -> RunSection:
    prefix = f"{index}-run"
    panels, no_curves = training_panels(run.series)
    curves = [_plot(assets, f"{prefix}-{panel.slug}", f"{run.name}: {panel.title.lower()} over steps",
                    lambda path, p=panel: plots.line_plot(p.curves, p.title, p.ylabel, path, counts=p.counts,
                                                         first_colour=p.first_colour))
              for panel in panels]
    evals = []
    for number, (task, metrics) in enumerate(sorted(eval_series(run.series).items())):
        values = [v for series in metrics.values() for _, v in series if math.isfinite(v)]
        fraction = bool(values) and all(0.0 <= v <= 1.0 for v in values)
        evals.append(_plot(assets, f"{prefix}-eval-{number}", f"{run.name}: eval {task} over steps",
                           lambda path, t=task, m=metrics, f=fraction: plots.line_plot(
                               m, t, "score", path, ylim=(-0.02, 1.02) if f else None)))
    return RunSection(anchor=f"input-{index}", name=run.name, path=str(run.path), summary=run.summary,
                      curves=curves, no_curves=no_curves, evals=evals,
                      eval_skips={task: f"{count:,.0f}" for task, count in eval_skips(run.series).items()},
                      results=[(file, results_tables(flat)) for file, flat in run.results.items()], notes=run.notes)


def _confusion(model: str, task: str, detail: ZeroshotDetail, name: str, assets: Assets) -> Confusion:
    shown = confused_classes(detail.confusion, CONFUSION_CAP)
    names = [detail.classnames[i] for i in shown]
    matrix = [[detail.confusion[i][j] for j in shown] for i in shown]
    n = len(detail.classnames)
    capped = "" if len(shown) == n else (f"{len(shown)} of {n} classes shown: those most involved in mistakes "
                                         f"(errors in their row and column); the others' cells are left out")
    picture = _plot(assets, name, f"confusion matrix of {model} on {task}",
                    lambda path: plots.confusion_plot(names, matrix, path, f"{task} ({model})"))
    return Confusion(model=model, task=task, picture=picture, accuracy=format_value(accuracy(detail.confusion)),
                     capped=capped, top=top_confusions(detail.classnames, detail.confusion), wide=len(shown) > 12)


def _gallery(model: str, task: str, detail: RetrievalDetail, assets: Assets) -> Gallery:
    def hit(rank: int, key: str, correct: set[str]) -> Hit:
        thumbnail = detail.thumbnails.get(key) if detail.modality == "image" else None
        return Hit(rank=rank, key=key, src=assets.thumbnail(thumbnail) if thumbnail else None, correct=key in correct)

    queries = []
    for query in detail.queries[:GALLERY_QUERIES]:
        correct = set(query.correct)
        hits = [hit(rank, key, correct) for rank, key in enumerate(query.top[:GALLERY_TOP], start=1)]
        shown = {h.key for h in hits}
        # A correct item ranked below the cut (or not at all) is shown apart, so a miss shows what was wanted.
        elsewhere = [hit(query.top.index(key) + 1 if key in query.top else 0, key, correct)
                     for key in query.correct if key not in shown]
        queries.append(Query(text=query.text, hits=hits, correct_elsewhere=elsewhere,
                             found=any(h.correct for h in hits)))
    capped = []
    if len(detail.queries) > GALLERY_QUERIES:
        capped.append(f"{GALLERY_QUERIES} of {len(detail.queries)} queries shown")
    if any(len(q.top) > GALLERY_TOP for q in detail.queries):
        capped.append(f"top {GALLERY_TOP} per query")
    return Gallery(model=model, task=task, modality=detail.modality, queries=queries, capped="; ".join(capped))


def benchmark_section(bench: BenchmarkInput, index: int, assets: Assets) -> BenchmarkSection:
    prefix = f"{index}-bench"
    heat = heat_rows(bench)
    heatmap = None
    if bench.rows:
        heatmap = _plot(assets, f"{prefix}-heatmap", "heat map of the main metric, models by tasks",
                        lambda path: plots.heatmap(bench.models, bench.tasks + ["average"],
                                                   [[c.value for c in cells] + [average.value]
                                                    for _, cells, average, _ in heat],
                                                   path, "main metric"))
    confusions, galleries = [], []
    for t, task in enumerate(bench.tasks):
        for m, model in enumerate(bench.models):
            detail = bench.details.get((model, task))
            if isinstance(detail, ZeroshotDetail):
                confusions.append(_confusion(model, task, detail, f"{prefix}-confusion-{m}-{t}", assets))
            elif isinstance(detail, RetrievalDetail):
                galleries.append(_gallery(model, task, detail, assets))
    rows = [{"model": row.model, "task": row.task, "type": row.task_type, "metric": row.main_metric or "–",
             "value": format_value(row.main_value),
             "samples": "–" if row.samples is None else f"{row.samples:,}",
             "skipped": "–" if row.skipped is None else f"{row.skipped:,}",
             "seconds": "–" if row.seconds is None else f"{row.seconds:,.1f}"}
            for row in bench.rows.values()]
    return BenchmarkSection(anchor=f"input-{index}", path=str(bench.path), suites=bench.suites, tasks=bench.tasks,
                            heat=heat, heatmap=heatmap, rows=rows, missing=bench.missing, confusions=confusions,
                            galleries=galleries, notes=bench.notes)


def sections(inputs: Sequence[Input], folder: Path) -> list[Section]:
    """Each input's section, its plots and thumbnails written under `folder`/assets."""
    assets = Assets(folder)
    return [run_section(item, index, assets) if isinstance(item, RunInput) else benchmark_section(item, index, assets)
            for index, item in enumerate(inputs, start=1)]


def _environment() -> jinja2.Environment:
    # Autoescaping on for every template (not only *.html): nothing from the inputs reaches the page unescaped.
    return jinja2.Environment(loader=jinja2.PackageLoader("mmpretrain.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def render(title: str, parts: Sequence[Section], generated: Optional[datetime] = None) -> str:
    generated = generated or datetime.now(timezone.utc)
    return _environment().get_template("report.html").render(
        title=title, sections=parts, generated=generated.strftime("%Y-%m-%d %H:%M UTC"),
        format_metric=format_metric)
