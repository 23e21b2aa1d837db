"""What a resume may change: the checkpoint's config (and the shard lists the run started with) against the new one.

Checked on every rank before anything in the run directory is written. A change that breaks exactness (the model,
the loss, the seed, the data stream: sources and their resolved shard lists, batch size, shuffle buffer, stages,
...) is refused in one line naming every differing key, old -> new, unless `--allow-changes` names it. A change
that is legitimate mid-run (train.steps, log/checkpoint cadence, eval.*, logging.*, the lr schedule, ...) takes
effect. Config history: `config.yaml` is the config the run started with and is never rewritten at resume; every
resume that changes something writes `config.<step>.yaml`, the resolved config used from that step on.
`data_manifest.json`, written at the run's first start, holds every source's resolved shard list; a shard change
allowed at a resume writes `data_manifest.<step>.json`, the lists in use from that step on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mmpretrain.config import RunConfig, config_to_dict, save_config
from mmpretrain.data.sources import resolve_sources
from mmpretrain.engine.checkpoint import load_checkpoint, resolve_resume
from mmpretrain.errors import ConfigError

log = logging.getLogger(__name__)

MANIFEST = "data_manifest.json"

# Keys (or sections, as a prefix) a resume may change: they take effect from the restored step. Anything else
# changes what the resumed run computes and is refused unless allowed by name.
LEGITIMATE = ("train.steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
              "train.progress", "train.device", "eval", "logging", "optim.lr", "optim.warmup_steps",
              "optim.min_lr_ratio", "optim.grad_clip", "data.num_workers", "data.max_skip_fraction",
              "data.skip_window", "train.malloc", "optim.fused")
# optim.fused: the same update up to rounding, kept by the restored optimizer (schedule.keep_own_implementation).
# Keys added after runs were already being written, with the value that reproduces what a run from before them
# did: a checkpoint's config without the key is read as having that value, so a resume shows (and records) the
# change where the new default differs.
ADDED_KEYS = {"loss.impl": "gather", "data.synthetic": False, "train.malloc": "system", "optim.fused": False}
# Not compared: the run directory is the same one by construction, and data_root only reaches the run through
# the shard specs (compared resolved).
IGNORED = ("run_name", "output_dir", "data_root")


def _matches(key: str, names: Sequence[str]) -> bool:
    return any(key == name or key.startswith(name + ".") for name in names)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {"section.key": value}; lists are values (compared whole)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for every leaf that differs (a key missing on one side is None there, except the old
    side's ADDED_KEYS, which take the value that reproduces the run from before them)."""
    b = flatten(new)
    a = {**{k: v for k, v in ADDED_KEYS.items() if k in b}, **flatten(old)}
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not _matches(k, IGNORED)}


def resolved_shards(config: RunConfig) -> dict[str, list[str]]:
    """Every data source's resolved shard list, by source name (empty without training data, and with
    data.synthetic, which ignores any shards given)."""
    data = config.data
    if data.synthetic or (not data.train and not data.sources):
        return {}
    sources = resolve_sources(data.train, data.sources, data.allow_shell_urls, data.allow_missing_shards)
    return {s.name: list(s.shards) for s in sources}


def shard_differences(old: Mapping[str, list[str]], new: Mapping[str, list[str]]) -> dict[str, tuple[Any, Any]]:
    """{"data.shards.<source>": (old, new)} as short descriptions: counts and the shards added / removed."""
    found = {}
    for name in sorted(set(old) | set(new)):
        before, after = list(old.get(name, [])), list(new.get(name, []))
        if before == after:
            continue
        added = [Path(s).name for s in after if s not in before]
        removed = [Path(s).name for s in before if s not in after]
        detail = ", ".join(filter(None, [f"+{added}" if added else "", f"-{removed}" if removed else ""]))
        found[f"data.shards.{name}"] = (f"{len(before)} shards", f"{len(after)} shards"
                                        + (f" ({detail})" if detail else " (reordered)"))
    return found


def _format(differences: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differences.items())


@dataclass
class ResumeCheck:
    """The outcome of the check: the restored step, and what changed (legitimate, and breaking but allowed)."""

    step: int
    legitimate: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    allowed: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.legitimate or self.allowed)


def read_manifest(run_dir: Path, step: Optional[int] = None) -> Optional[dict[str, list[str]]]:
    """The shard lists in use at `step` (default: the newest): data_manifest.json from the first start, or the
    newest data_manifest.<step>.json a resume allowed a data change at, up to `step`."""
    found = [(0, run_dir / MANIFEST)] if (run_dir / MANIFEST).is_file() else []
    for path in run_dir.glob("data_manifest.*.json"):
        at = path.name.split(".")[1]
        if at.isdigit() and (step is None or int(at) <= step):
            found.append((int(at), path))
    if not found:
        return None
    return json.loads(max(found)[1].read_text(encoding="utf-8"))["sources"]


def write_manifest(path: Path, shards: Mapping[str, list[str]]) -> None:
    path.write_text(json.dumps({"sources": dict(shards)}, indent=1), encoding="utf-8")


def check_resume(config: RunConfig, resume: Optional[str], allow_changes: Sequence[str] = ()) -> Optional[ResumeCheck]:
    """Compare the checkpoint `resume` names with `config`; None when there is nothing to resume (a first start).
    Raises ConfigError naming every breaking change that `allow_changes` does not name. Reads only."""
    if resume is None:
        return None
    path = resolve_resume(config.run_dir / "checkpoints", resume)
    if path is None:
        return None
    checkpoint = load_checkpoint(path)
    step = int(checkpoint.get("step", 0))
    old = checkpoint.get("config")
    differences = config_differences(old, config_to_dict(config)) if isinstance(old, Mapping) else {}
    if not isinstance(old, Mapping):
        log.warning("%s holds no config: the resumed config is not compared with it", path)
    started = read_manifest(config.run_dir, step)
    if started is not None:
        differences.update(shard_differences(started, resolved_shards(config)))
    check = ResumeCheck(step)
    refused = {}
    for key, change in differences.items():
        if _matches(key, LEGITIMATE):
            check.legitimate[key] = change
        elif _matches(key, allow_changes):
            check.allowed[key] = change
        else:
            refused[key] = change
    if refused:
        raise ConfigError(f"resume from {path} refused, these changes break an exact resume: {_format(refused)} "
                          f"(resume with the run's own config, or name the keys in --allow-changes "
                          f"{','.join(refused)})")
    return check


def record_config(config: RunConfig, run_dir: Path, check: Optional[ResumeCheck]) -> None:
    """Rank 0, after the check: a first start writes config.yaml and the data manifest; a resume that changes
    something writes config.<step>.yaml (config.yaml stays the run's first config) and logs the changes."""
    if check is None:
        save_config(config, run_dir / "config.yaml")
        write_manifest(run_dir / MANIFEST, resolved_shards(config))
        return
    if not (run_dir / "config.yaml").exists():
        save_config(config, run_dir / "config.yaml")
    if read_manifest(run_dir) is None:  # a run started before manifests: from now on
        log.warning("%s has no %s: the shard lists are recorded now, at resume", run_dir, MANIFEST)
        write_manifest(run_dir / MANIFEST, resolved_shards(config))
    if check.allowed:
        log.warning("resuming at step %d with changes that break an exact resume, allowed by --allow-changes: %s",
                    check.step, _format(check.allowed))
    if check.changed:
        if check.legitimate:
            log.info("resuming at step %d with changes: %s", check.step, _format(check.legitimate))
        if check.allowed and any(k.startswith("data.shards.") for k in check.allowed):
            write_manifest(run_dir / f"data_manifest.{check.step}.json", resolved_shards(config))
        save_config(config, run_dir / f"config.{check.step}.yaml")
