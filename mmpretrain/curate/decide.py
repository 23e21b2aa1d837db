"""The decide phase: the filter stages, in config order, over the features table; the decision table.

Each stage is fitted on what the stages before it kept (a global stage gathers small statistics from every
part on Ray workers; dedup shuffles by cluster with Ray Data), then every part is decided by one Ray task that
applies all stages in order and writes its rows of the decision table:

    group, shard, key, kept, reason (null when kept), stage (the stage that dropped it, or null), stage_index,
    caption, width, height, clip_score, and each stage's score columns (NaN where the stage never saw the row)

The table is written to ``decisions.partial/`` and renamed to ``decisions/`` when whole; the fitted stages and
the counts go to ``work/decided.json``. A rerun with the same config reuses both.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mmpretrain.curate.stages import Stage, StageResult
from mmpretrain.curate.table import numbers

T = TypeVar("T")
READ_STAGE = "read"


def decision_file(part: str) -> str:
    """`features/wave-00003/<name>.parquet` -> `wave-00003-<name>.parquet`: a group's rows are found by its wave."""
    return f"{Path(part).parent.name}-{Path(part).name}"


def read_part(path: str, columns: Optional[list[str]] = None) -> pa.Table:
    return pq.read_table(path, columns=columns)


def survivors(table: pa.Table, stages: Sequence[Stage]) -> pa.Table:
    """The rows every stage in `stages` keeps (the reader's rejects never reach a stage)."""
    table = table.filter(pa.compute.is_null(table.column("read_reason")))
    for stage in stages:
        if table.num_rows == 0:
            break
        reasons = stage.apply(table).reasons
        table = table.filter(pa.array([r is None for r in reasons]))
    return table


def _on_survivors(part: str, stages: Sequence[Stage], fn: Callable[[pa.Table], T]) -> T:
    return fn(survivors(read_part(part), stages))


@dataclass
class _SurvivorsThen:
    stages: list[Stage]
    fn: Callable[[pa.Table], pa.Table]

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.fn(survivors(read_part(batch.column("part")[0].as_py()), self.stages))


class RayFitContext:
    """`FitContext` over the features parts, for the stage at `stage_index` (fitted stages before it)."""

    def __init__(self, parts: list[str], seed: int, work_dir: Path, eval_features: Callable[[Sequence[str]], np.ndarray],
                 progress: bool) -> None:
        self.parts, self.seed, self.work_dir = parts, seed, work_dir
        self._eval_features, self.progress = eval_features, progress
        self.before: list[Stage] = []
        self.stage_index = 0

    def over_parts(self, fn: Callable[[pa.Table], T], refs: bool = False) -> list[Any]:
        import ray

        stages_ref = ray.put(self.before)
        task = ray.remote(num_cpus=1)(_on_survivors)
        pending = [task.remote(part, stages_ref, fn) for part in self.parts]
        return pending if refs else ray.get(pending)

    def survivors(self, fn: Callable[[pa.Table], pa.Table]) -> Any:
        import ray.data

        return ray.data.from_items([{"part": p} for p in self.parts], override_num_blocks=max(1, len(self.parts))
                                   ).map_batches(_SurvivorsThen(list(self.before), fn), batch_size=1,
                                                 batch_format="pyarrow")

    def eval_embeddings(self, specs: Sequence[str]) -> np.ndarray:
        return self._eval_features(specs)


def _decide_part(part: str, out_dir: str, stages: Sequence[Stage]) -> dict[str, Any]:
    """Apply every stage to one part; write its decision rows; return its counts."""
    table = read_part(part)
    n = table.num_rows
    reason: list[Optional[str]] = table.column("read_reason").to_pylist()
    stage_name: list[Optional[str]] = [READ_STAGE if r is not None else None for r in reason]
    stage_index = np.full(n, -1, np.int32)
    # Every declared score column in every part (NaN where a stage never saw the row): one schema for the table.
    scores = {column: np.full(n, np.nan, np.float32) for stage in stages for column in stage.score_columns}
    alive = np.array([r is None for r in reason])
    for index, stage in enumerate(stages):
        rows = np.nonzero(alive)[0]
        if len(rows) == 0:
            break
        result: StageResult = stage.apply(table.take(pa.array(rows)))
        for column, values in result.scores.items():
            scores[column][rows] = values
        for row, why in zip(rows, result.reasons):
            if why is not None:
                reason[row], stage_name[row], stage_index[row] = why, stage.type, index
                alive[row] = False
    decisions = pa.table({
        "group": table.column("group"), "shard": table.column("shard"), "key": table.column("key"),
        "kept": pa.array(alive), "reason": pa.array(reason, pa.string()), "stage": pa.array(stage_name, pa.string()),
        "stage_index": pa.array(stage_index), "caption": table.column("caption"), "width": table.column("width"),
        "height": table.column("height"), "clip_score": table.column("clip_score").cast(pa.float32()),
        **{column: pa.array(values) for column, values in sorted(scores.items())},
    })
    pq.write_table(decisions, Path(out_dir) / decision_file(part))
    counts = Counter(f"{i}\x00{s}\x00{r}" for i, s, r in zip(stage_index, stage_name, reason) if r is not None)
    return {"rows": n, "kept": int(alive.sum()), "dropped": dict(counts)}


def decide(parts: list[str], stages: Sequence[Stage], out_dir: Path, work_dir: Path, seed: int,
           eval_features: Callable[[Sequence[str]], np.ndarray], progress: bool) -> dict[str, Any]:
    """Fit the stages in order, decide every part, commit the decision table; returns what decided.json holds."""
    import ray

    context = RayFitContext(parts, seed, work_dir, eval_features, progress)
    fitted: list[dict[str, Any]] = []
    for index, stage in enumerate(stages):
        context.before, context.stage_index = list(stages[:index]), index
        if progress:
            tqdm.write(f"curate: fitting stage {index} ({stage.type})")
        fitted.append({**stage.describe(), "fit": stage.fit(context)})
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    stages_ref = ray.put(list(stages))
    task = ray.remote(num_cpus=1)(_decide_part)
    pending = [task.remote(part, str(partial), stages_ref) for part in parts]
    totals: Counter = Counter()
    rows = kept = 0
    with tqdm(total=len(pending), desc="deciding", unit="part", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            result = ray.get(done[0])
            rows, kept = rows + result["rows"], kept + result["kept"]
            totals.update(result["dropped"])
            bar.update(1)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(partial, out_dir)
    types = [s.type for s in stages]
    dropped: dict[str, dict[str, int]] = {}
    for joined, count in sorted(totals.items(), key=lambda item: int(item[0].split("\x00")[0])):
        index, stage, reason = joined.split("\x00")
        label = stage if int(index) < 0 or types.count(stage) == 1 else f"{stage}#{index}"  # stage order, "read" first
        dropped.setdefault(label, {})[reason] = count
    return {"samples": rows, "kept": kept, "dropped": dropped, "stages": fitted}
