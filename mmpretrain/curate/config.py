"""`mmpretrain curate` configs: input shard sets, an output folder, Ray's resources, and the stage list.

    inputs: [data/laion/{00000..00099}.tar]   # shard sets: directory, glob or brace pattern
    output: curated/laion-clean
    stages: [{type: basic_filter, ...}, {type: embed, model: ...}, ..., {type: write, samples_per_shard: 1000}]

Overrides are OmegaConf dotted keys (``output=/tmp/x``, ``stages.2.top_fraction=0.3``, ``ray.num_cpus=8``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmpretrain.config import _update
from mmpretrain.curate.stages import Embed, Stage, Write, absolute_spec, parse_stages
from mmpretrain.errors import ConfigError

_TOP_KEYS = {"inputs", "output", "seed", "group_shards", "wave_groups", "ray", "stages", "demo", "limits"}


@dataclass
class RayResources:
    address: Optional[str] = None        # join this cluster (or `--address`); None starts a local Ray
    num_cpus: Optional[int] = None       # a local Ray's CPUs (None: all of this machine's)
    num_gpus: Optional[int] = None
    object_store_mb: Optional[int] = None


@dataclass
class CurateConfig:
    inputs: list[str]
    output: str
    stages: list[Stage]
    seed: int = 0
    group_shards: int = 1                # input shards per group: the unit output is committed by
    wave_groups: int = 16                # groups analysed per Ray Data execution: the unit analysis resumes by
    ray: RayResources = field(default_factory=RayResources)
    # configs/curation/demo.yaml: {root: data/demo, noisy: data/demo-noisy}: the embedded demo data and the noisy
    # set made from it (bench/curation_repro.py's corruption) are generated first when absent.
    demo: Optional[dict[str, str]] = None
    max_member_bytes: int = 64 * 2**20
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def embed(self) -> Optional[Embed]:
        return next((s for s in self.stages if isinstance(s, Embed)), None)

    @property
    def write(self) -> Write:
        return next(s for s in self.stages if isinstance(s, Write))

    def fingerprints(self) -> dict[str, str]:
        """Hashes of what each phase's results depend on: a resume redoes the phases whose hash changed. Built from
        the resolved stages (`Stage.describe`, absolute paths, entry lists), not the config's text."""
        embed_at = next((i for i, s in enumerate(self.stages) if isinstance(s, Embed)), -1)
        analyse = {"inputs": self.inputs, "group_shards": self.group_shards, "wave_groups": self.wave_groups,
                   "stages_to_embed": [s.describe() for s in self.stages[:embed_at + 1]],
                   "max_member_bytes": self.max_member_bytes}
        decide = {"analyse": analyse, "filters": [s.describe() for s in self.stages if s.role == "filter"],
                  "seed": self.seed}
        write = {"decide": decide, "written": [s.describe() for s in self.stages if s.role in ("transform", "write")]}
        return {name: _hash(value) for name, value in (("analyse", analyse), ("decide", decide), ("write", write))}


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_curate_config(path: str | Path, overrides: Sequence[str] = ()) -> CurateConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"curation config {path} does not exist")
    try:
        raw = OmegaConf.load(path)
    except (OmegaConfBaseException, ValueError) as e:  # yaml errors are ValueErrors
        raise ConfigError(f"{path}: not a valid YAML mapping ({str(e).splitlines()[0]})") from None
    for override in overrides:  # `stages.2.top_fraction=0.3` updates inside the list (a merge would replace it)
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not key=value")
        raw = _update(raw, override)
    try:
        plain = OmegaConf.to_container(raw, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None
    if not isinstance(plain, dict):
        raise ConfigError(f"{path}: a curation config is a mapping (inputs, output, stages, ...)")
    extra = sorted(set(plain) - _TOP_KEYS)
    if extra:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(extra)} (known: {', '.join(sorted(_TOP_KEYS))})")
    inputs = plain.get("inputs")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) and i for i in inputs):
        raise ConfigError(f"{path}: 'inputs' must list one or more shard sets (directory, glob or brace pattern)")
    if not isinstance(plain.get("output"), str) or not plain["output"]:
        raise ConfigError(f"{path}: 'output' (the folder the curated shards go to) is required")
    stages = parse_stages(plain.get("stages") or [], path.name)
    ray_section = _section(plain, "ray", set(RayResources.__dataclass_fields__), path)
    for key in ray_section:
        _require_type(ray_section[key], (int,) if key != "address" else (str,), f"{path.name}: ray.{key}",
                      optional=True)
    limits = _section(plain, "limits", {"max_member_bytes"}, path)
    demo = _section(plain, "demo", {"root", "noisy", "seed"}, path) or None
    for key in ("seed", "group_shards", "wave_groups"):
        _require_type(plain.get(key, 1), (int,), f"{path.name}: {key}")
    _require_type(limits.get("max_member_bytes", 1), (int,), f"{path.name}: limits.max_member_bytes")
    # Absolute paths: Ray workers on other nodes (or with another working directory) see the same files.
    config = CurateConfig(inputs=[absolute_spec(i) for i in inputs], output=str(Path(plain["output"]).absolute()),
                          stages=stages, seed=plain.get("seed", 0), group_shards=plain.get("group_shards", 1),
                          wave_groups=plain.get("wave_groups", 16), ray=RayResources(**ray_section), demo=demo,
                          max_member_bytes=limits.get("max_member_bytes", 64 * 2**20), source=str(path), raw=plain)
    if config.group_shards < 1 or config.wave_groups < 1 or config.max_member_bytes < 1:
        raise ConfigError(f"{path}: group_shards, wave_groups and limits.max_member_bytes must be >= 1")
    return config


def _section(plain: dict[str, Any], name: str, known: set[str], path: Path) -> dict[str, Any]:
    section = plain.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: '{name}' must be a mapping")
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"{path}: {name}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return section


def _require_type(value: Any, types: tuple[type, ...], label: str, optional: bool = False) -> None:
    if (value is None and optional) or (isinstance(value, types) and not isinstance(value, bool)):
        return
    raise ConfigError(f"{label}: expected {' or '.join(t.__name__ for t in types)}, got {value!r}")
