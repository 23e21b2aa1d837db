"""The write phase: kept samples copied byte for byte into new shards, committed once per input shard group.

For group g, a Ray task reads its decision rows, reads the group's input shards (every member, as bytes, through
the safe reader; nothing decoded), and writes the kept samples in input order into
``shards/.g000007.partial/<prefix>-000007-NNNNNN.tar`` (transform stages add members, e.g. ``neg.json``). It then
renames the tars into ``shards/`` and writes ``work/groups/000007.json`` (the commit record: file names, sizes,
samples). A group without a record is not committed: a rerun deletes whatever of it is on disk and writes it again,
so a sample is in the output exactly once however often the driver or a worker died. The record also holds the
number of samples the decision table kept for the group; a differing count (an input shard changed on disk since
it was analysed) fails the group instead of writing a silently different set.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from mmpretrain.curate.stages import Stage, Write
from mmpretrain.data.decode import decode_captions
from mmpretrain.data.safe_tar import EVERY_MEMBER, ShardFailure, read_shard
from mmpretrain.data.shard_writer import ShardWriter
from mmpretrain.data.skips import SampleSkipped


def group_name(group: int) -> str:
    return f"{group:06d}"


def record_path(work_dir: Path, group: int) -> Path:
    return work_dir / "groups" / f"{group_name(group)}.json"


def read_record(work_dir: Path, group: int, shards_dir: Path) -> dict[str, Any] | None:
    """The group's commit record when it is valid and every file it names is on disk at its size, else None."""
    path = record_path(work_dir, group)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for name, size in record.get("files", {}).items():
        file = shards_dir / name
        if not file.is_file() or file.stat().st_size != size:
            return None
    return record


def kept_keys(decisions_dir: Path, group: int, wave: str) -> list[tuple[str, str]]:
    """The group's kept (shard, key) pairs, from its wave's decision files only."""
    files = sorted(str(p) for p in decisions_dir.glob(f"{wave}-*.parquet"))
    if not files:
        return []
    table = pads.dataset(files, format="parquet").to_table(
        columns=["shard", "key"], filter=(pads.field("group") == group) & pads.field("kept"))
    return list(zip(table.column("shard").to_pylist(), table.column("key").to_pylist()))


def write_group(group: int, wave: str, input_shards: Sequence[str], decisions_dir: str, shards_dir: str,
                work_dir: str, write: Write, transforms: Sequence[Stage], max_member_bytes: int) -> dict[str, Any]:
    """Write and commit one group's output shards (idempotent: an earlier attempt's files are replaced)."""
    shards_path, work_path = Path(shards_dir), Path(work_dir)
    prefix = f"{write.prefix}-{group_name(group)}"
    for stale in shards_path.glob(f"{prefix}-*.tar"):     # an attempt that died before its record
        stale.unlink()
    partial = shards_path / f".g{group_name(group)}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    keep = set(kept_keys(Path(decisions_dir), group, wave))
    written = 0
    with ShardWriter(partial, write.samples_per_shard, prefix=prefix) as writer:
        for shard in input_shards:
            for item in read_shard(shard, EVERY_MEMBER, max_member_bytes=max_member_bytes):
                if isinstance(item, ShardFailure) or (shard, item["__key__"]) not in keep:
                    continue
                key = item["__key__"]
                if item.get("__oversized__"):  # analysis read every member under the same cap: the shard changed
                    raise RuntimeError(f"sample {key!r} of {shard} now has a member over the size cap "
                                       f"({item['__oversized__']}); was the shard changed since analysis?")
                members = {k: v for k, v in item.items() if not k.startswith("__")}
                extra = dict(members)
                for stage in transforms:
                    extra.update(stage.members(key, _captions(members)))
                _write_whole(writer, key, extra)
                written += 1
    if written != len(keep):
        raise RuntimeError(f"group {group}: the decision table keeps {len(keep)} samples but the input shards "
                           f"{', '.join(input_shards)} now give {written}: were they changed since analysis? "
                           "Rerun with --restart")
    files: dict[str, int] = {}
    counts = dict(zip((p.name for p in writer.shards), writer.counts))
    for path in writer.shards:
        os.replace(path, shards_path / path.name)
        files[path.name] = (shards_path / path.name).stat().st_size
    shutil.rmtree(partial, ignore_errors=True)
    record = {"group": group, "inputs": list(input_shards), "samples": written, "files": files, "counts": counts}
    path = record_path(work_path, group)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
    return record


def _captions(members: dict[str, Any]) -> list[str]:
    try:
        return decode_captions(members.get("txt"))
    except SampleSkipped:
        return []


def _write_whole(writer: ShardWriter, key: str, members: dict[str, bytes]) -> None:
    """Every member as it was (the image's extension, .txt, .json, .flac...), plus what transforms added."""
    image_ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
    if image_ext is None:  # the decision table keeps only samples with an image; a changed shard lands here
        raise RuntimeError(f"sample {key!r} has no image member any more")
    captions = members["txt"].decode("utf-8")
    meta_bytes = members.get("json")
    extra = {k: v for k, v in members.items() if k not in (image_ext, "txt", "json")}
    if meta_bytes is not None:
        extra["json"] = meta_bytes  # stored as the original bytes, not re-serialised
    writer.write(key, members[image_ext], image_ext, captions, None, extra)
