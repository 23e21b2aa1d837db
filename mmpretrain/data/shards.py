"""Where shards are and how many samples they hold. Reading them is data/safe_tar.py's; writing, shard_writer.py's.

A shard set is named by a directory (every ``*.tar`` in it), a glob, or a brace pattern
(``data/shard-{000000..000009}.tar``). Sample counts come from a ``sizes.json`` beside the shards, in
open_clip's format (``{"shard-000000.tar": 256, ...}``), so training knows the data size without scanning.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import braceexpand
import logging

from mmpretrain.errors import ConfigError

log = logging.getLogger(__name__)

SIZES_FILE = "sizes.json"

# A raw sample as the tar reader yields it: "__key__", "__url__", then one bytes value per declared extension.
RawSample = dict[str, Any]


def expand_shards(spec: str, allow_missing: bool = False) -> list[str]:
    """Resolve a shard spec (directory, glob or brace pattern) into a sorted list of existing tar paths.

    A brace pattern names its shards one by one, so a name that does not exist is a lost shard (a failed copy,
    a writer still running), not a choice: refused unless `allow_missing` (then logged as a warning).
    """
    path = Path(spec)
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar"))
    elif any(ch in spec for ch in "{*?["):
        names = list(braceexpand.braceexpand(spec))
        shards = sorted({s for pattern in names for s in glob.glob(pattern)})
        missing = [n for n in names if not any(ch in n for ch in "*?[") and not os.path.exists(n)]
        if missing and shards:
            what = (f"{len(missing)} of the {len(names)} shards named by {spec!r} do not exist (first: "
                    f"{missing[0]})")
            if not allow_missing:
                raise FileNotFoundError(f"{what}; copy them, fix the pattern, or set data.allow_missing_shards=true "
                                        "to read the ones present")
            log.warning("%s; reading the %d present (data.allow_missing_shards=true)", what, len(shards))
    else:
        shards = [spec] if path.is_file() else []
    if not shards:
        raise FileNotFoundError(f"no shards found for {spec!r} (expected a directory of .tar files, a glob, "
                                "or a brace pattern such as data/shard-{000000..000009}.tar)")
    return shards


def read_shard_sizes(shards: Iterable[str]) -> dict[str, int] | None:
    """Samples per shard from the sizes.json files beside the shards, or None if any count is unknown."""
    sizes: dict[str, int] = {}
    cache: dict[str, dict[str, int]] = {}
    for shard in shards:
        folder = os.path.dirname(os.path.abspath(shard))
        if folder not in cache:
            sizes_path = os.path.join(folder, SIZES_FILE)
            if not os.path.exists(sizes_path):
                return None
            with open(sizes_path) as f:
                try:
                    cache[folder] = json.load(f)
                except ValueError as e:  # one line naming the file, not a bare JSONDecodeError
                    raise ConfigError(f"{sizes_path}: not valid JSON ({e})") from None
        count = cache[folder].get(os.path.basename(shard))
        if count is None:
            return None
        sizes[shard] = int(count)
    return sizes


def update_sizes(folder: Path, counts: Mapping[str, int]) -> None:
    """Record `counts` (shard file name -> samples) in `folder`'s sizes.json, atomically. Entries of other shards
    in the folder (another prefix, another writer) are kept as long as their tar exists: `read_shard_sizes` needs a
    count for every shard it is given."""
    path = folder / SIZES_FILE
    sizes: dict[str, int] = {}
    if path.exists():
        old = json.loads(path.read_text())
        sizes = {name: int(n) for name, n in old.items() if (folder / name).exists()}
    sizes.update({name: int(n) for name, n in counts.items()})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(sizes.items())), indent=1))
    os.replace(tmp, path)


def read_sizes(shards: Iterable[str]) -> int | None:
    """Total samples in `shards` from the sizes.json files beside them, or None if any count is unknown."""
    sizes = read_shard_sizes(shards)
    return None if sizes is None else sum(sizes.values())
