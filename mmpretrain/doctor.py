"""`mmpretrain doctor RUN_DIR`: what state a run is in, in a few lines. Reads only.

Each part is a pure function of the run directory returning lines: checkpoints (the last complete one, newer
ones a resume would skip), config (the recorded config against the newest checkpoint's), the lock holder, the
skip counts summed over ranks, the last logged step, and whether final results exist.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import yaml

from mmpretrain.engine.checkpoint import list_checkpoints, load_checkpoint
from mmpretrain.errors import ConfigError
from mmpretrain.resume import config_differences

_STEP = re.compile(r"^step-(\d{9})$")
_HISTORY = re.compile(r"^config\.(\d+)\.yaml$")


def is_run_dir(run_dir: Path) -> bool:
    return run_dir.is_dir() and ((run_dir / "config.yaml").is_file() or (run_dir / "checkpoints").is_dir())


def newest_loadable(run_dir: Path) -> tuple[Optional[Path], Optional[dict[str, Any]], list[str]]:
    """(the newest checkpoint that loads, its content, one line per newer one that does not)."""
    skipped = []
    for path in reversed(list_checkpoints(run_dir / "checkpoints")):
        try:
            state = load_checkpoint(path)
            int(state["step"])
        except Exception as e:  # noqa: BLE001 - any failure to read makes it unusable
            reason = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
            skipped.append(f"  skipped: {path.name} does not load ({reason}); `--resume latest` would fail on it, "
                           "pass the last complete one's path")
            continue
        return path, state, skipped
    return None, None, skipped


def checkpoint_lines(run_dir: Path, path: Optional[Path], state: Optional[dict[str, Any]],
                     skipped: list[str]) -> list[str]:
    folder = run_dir / "checkpoints"
    if path is None or state is None:
        lines = ["checkpoints: none complete (a resume starts from step 0)"]
    else:
        lines = [f"checkpoints: last complete step {int(state['step'])} ({path})"]
    lines += skipped
    newest = path.with_suffix("").name if path is not None else ""
    if folder.is_dir():
        for item in sorted(folder.iterdir()):
            if item.is_dir() and _STEP.match(item.name) and item.name > newest \
                    and not item.with_name(item.name + ".pt").exists():
                lines.append(f"  incomplete: {item.name}/ without its .pt (an interrupted save; skipped)")
            elif ".pt.tmp-" in item.name:
                lines.append(f"  incomplete: {item.name} (an interrupted write; skipped)")
    return lines


def config_in_effect(run_dir: Path, step: Optional[int]) -> Optional[Path]:
    """config.yaml, or the newest config.<step>.yaml a resume wrote up to `step`."""
    found = [(0, run_dir / "config.yaml")] if (run_dir / "config.yaml").is_file() else []
    for path in run_dir.glob("config.*.yaml"):
        m = _HISTORY.match(path.name)
        if m and (step is None or int(m.group(1)) <= step):
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


def config_lines(run_dir: Path, state: Optional[dict[str, Any]]) -> list[str]:
    step = int(state["step"]) if state else None
    recorded = config_in_effect(run_dir, step)
    history = sorted(p.name for p in run_dir.glob("config.*.yaml") if _HISTORY.match(p.name))
    lines = [f"config history: {', '.join(history)}"] if history else []
    if recorded is None:
        return lines + ["config: no config.yaml"]
    if not state or not isinstance(state.get("config"), dict):
        return lines + [f"config: {recorded.name} (no checkpoint config to compare)"]
    try:
        written = yaml.safe_load(recorded.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        return lines + [f"config: {recorded.name} is not valid YAML ({str(e).splitlines()[0]})"]
    differences = config_differences(state["config"], written)
    if not differences:
        return lines + [f"config: {recorded.name} matches the checkpoint's"]
    listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differences.items())
    return lines + [f"config: checkpoint -> {recorded.name} differ: {listed}"]


def lock_lines(run_dir: Path) -> list[str]:
    lock = run_dir / ".lock"
    if not lock.is_file():
        return ["lock: none"]
    text = lock.read_text(encoding="utf-8", errors="replace").strip()
    try:
        holder = json.loads(text)
        if isinstance(holder, dict):
            text = ", ".join(f"{k}={v}" for k, v in holder.items())
    except ValueError:
        pass
    return [f"lock: held ({text})"]


def skip_lines(state: Optional[dict[str, Any]]) -> list[str]:
    ranks = state.get("data") if state else None
    if not isinstance(ranks, list):
        return ["skips: no data state in the checkpoint"]
    delivered, by_reason, by_shard = 0, Counter(), Counter()
    for rank in ranks:
        skips = rank.get("skips") if isinstance(rank, dict) else None
        if not skips:
            continue
        delivered += int(skips.get("delivered", 0))
        by_reason.update(skips.get("by_reason", {}))
        by_shard.update(skips.get("by_shard", {}))
    total = sum(by_reason.values())
    line = f"skips: {total} skipped, {delivered} delivered over {len(ranks)} rank(s)"
    if total:
        line += " (" + ", ".join(f"{r}: {n}" for r, n in by_reason.most_common()) + "); worst shards: " + \
            ", ".join(f"{Path(s).name}: {n}" for s, n in by_shard.most_common(3))
    return [line]


def metrics_lines(run_dir: Path) -> list[str]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return ["metrics: no metrics.jsonl"]
    last = None
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if isinstance(record, dict) and "loss" in record:
                last = record
    if last is None:
        return ["metrics: no training step logged"]
    return [f"metrics: last logged step {last.get('step')}, loss {last['loss']:.4f}"]


def results_lines(run_dir: Path) -> list[str]:
    exists = (run_dir / "results.json").is_file()
    return [f"results.json: {'present' if exists else 'absent'}"]


def diagnose(run_dir: Path) -> list[str]:
    """Every part's lines; ConfigError when `run_dir` is not a run directory."""
    if not is_run_dir(run_dir):
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml or checkpoints/)")
    path, state, skipped = newest_loadable(run_dir)
    return [f"run: {run_dir}", *checkpoint_lines(run_dir, path, state, skipped), *config_lines(run_dir, state),
            *lock_lines(run_dir), *skip_lines(state), *metrics_lines(run_dir), *results_lines(run_dir)]
