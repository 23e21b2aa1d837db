"""The page's PNG plots, drawn with matplotlib's Agg renderer.

Figures are made with `matplotlib.figure.Figure` and an Agg canvas, never through pyplot: pyplot keeps global
figure state and picks a GUI backend from the environment, neither of which a batch command wants (no display on
a cluster node, no figures left open between plots)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmpretrain.report.inputs import Series

DPI = 100
# Tableau's 10 colours minus grey, so curves in one panel stay distinguishable on white.
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    # Fixed metadata: the same inputs give the same bytes (no creation software version or date in the PNG).
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})


def line_plot(curves: dict[str, Series], title: str, ylabel: str, path: Path, *, counts: bool = False,
              ylim: Optional[tuple[float, float]] = None, first_colour: int = 0) -> None:
    """One small plot of `curves` (label -> (step, value) series) over the step. Values that are not finite are
    gaps, not points: a NaN loss must not stretch or break the axis. `counts`: whole numbers from 0."""
    figure = _figure(4.4, 2.9)
    axes = figure.add_subplot()
    steps_seen: set[int] = set()
    for index, (label, series) in enumerate(curves.items()):
        steps = [step for step, _ in series]
        steps_seen.update(steps)
        values = [value if math.isfinite(value) else math.nan for _, value in series]
        # One point would be an invisible line of length zero: markers make short series visible.
        marker = "o" if len(series) <= 12 else None
        colour = COLOURS[(first_colour + index) % len(COLOURS)]
        axes.plot(steps, values, label=label, color=colour, linewidth=1.4, marker=marker,
                  markersize=3.5)
    if counts:
        top = max((v for s in curves.values() for _, v in s if math.isfinite(v)), default=0.0)
        axes.set_ylim(0, max(1.0, top * 1.1))
        axes.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    elif ylim is not None:
        axes.set_ylim(*ylim)
    else:
        axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
    if len(steps_seen) <= 5:
        # A few eval steps: ticks at those steps, not at made-up fractions of a step around them.
        axes.set_xticks(sorted(steps_seen))
        if len(steps_seen) == 1:
            step = next(iter(steps_seen))
            axes.set_xlim(step - 1, step + 1)
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("step", fontsize=8)
    axes.set_ylabel(ylabel, fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(True, alpha=0.3, linewidth=0.6)
    if len(curves) > 1:
        # Below the axes: inside, a legend of six retrieval metrics hides the curves it names.
        axes.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    _save(figure, path)


def _text_colour(fraction: float) -> str:
    return "white" if fraction > 0.6 else "black"


def heatmap(rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[Optional[float]]], path: Path,
            title: str) -> None:
    """Models x tasks main metric, 0 to 1 on one colour scale (the HTML table beside it has the exact numbers)."""
    grid = np.array([[math.nan if v is None else v for v in row] for row in values], dtype=float)
    width = min(2.0 + 0.9 * len(columns), 16.0)
    height = min(1.2 + 0.4 * len(rows), 14.0)
    figure = _figure(width, height)
    axes = figure.add_subplot()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#eeeeee")
    image = axes.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(columns)), labels=list(columns), rotation=35, ha="right", fontsize=8)
    axes.set_yticks(range(len(rows)), labels=list(rows), fontsize=8)
    if len(rows) * len(columns) <= 400:
        for i in range(len(rows)):
            for j in range(len(columns)):
                value = grid[i, j]
                text = "–" if math.isnan(value) else f"{value:.2f}"
                axes.text(j, i, text, ha="center", va="center", fontsize=7,
                          color="black" if math.isnan(value) else _text_colour(value))
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, shrink=0.8).ax.tick_params(labelsize=7)
    _save(figure, path)


def confusion_plot(classnames: Sequence[str], confusion: Sequence[Sequence[int]], path: Path, title: str) -> None:
    """A confusion matrix, rows = true class, columns = predicted. Colours are each row's fractions (a rare class's
    mistakes stay visible beside a frequent class's); the numbers written in the cells are counts."""
    counts = np.array(confusion, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = len(classnames)
    side = min(2.2 + 0.28 * n, 11.0)
    figure = _figure(side + 0.8, side)
    axes = figure.add_subplot()
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    font = 8 if n <= 12 else (6 if n <= 24 else 5)
    axes.set_xticks(range(n), labels=list(classnames), rotation=90, fontsize=font)
    axes.set_yticks(range(n), labels=list(classnames), fontsize=font)
    axes.set_xlabel("predicted", fontsize=8)
    axes.set_ylabel("true", fontsize=8)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    axes.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=6,
                              color=_text_colour(fractions[i, j]))
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class").ax.tick_params(labelsize=7)
    _save(figure, path)
