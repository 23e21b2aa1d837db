"""Writing shard sets: fixed-size WebDataset tars plus the ``sizes.json`` that `data/shards.py` reads back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import webdataset as wds

from mmpretrain.data.shards import update_sizes

# A fixed member mtime makes a shard's bytes depend only on its samples, so the same input writes identical tars.
_TAR_MTIME = 1_700_000_000  # an int: a float mtime makes tarfile add a 1 KiB pax header per member


class ShardWriter:
    """Write samples into ``{prefix}-{index:06d}.tar`` shards of a fixed size, then a ``sizes.json`` beside them.

    A thin layer over webdataset's ``TarWriter``: it rotates shards by count (not bytes, so every shard but the
    last holds exactly ``samples_per_shard`` samples and the data size is known up front), checks keys, and
    records counts. Image bytes are stored exactly as given, never re-encoded.

    Use as a context manager; ``shards`` and ``total`` hold the written paths and sample count after close.
    The folder must not already hold shards with the same prefix (FileExistsError), so no stale shard survives.
    """

    def __init__(self, out_dir: str | Path, samples_per_shard: int = 1000, prefix: str = "shard") -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        if not prefix or "/" in prefix:
            raise ValueError(f"shard prefix must be a non-empty file name part, got {prefix!r}")
        self.out_dir = Path(out_dir)
        self.samples_per_shard = samples_per_shard
        self.prefix = prefix
        self.shards: list[Path] = []
        self.counts: list[int] = []
        self.total = 0
        self._keys: set[str] = set()
        self._tar: wds.TarWriter | None = None
        self._closed = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Refuse to mix with an earlier run's shards: a stale, higher-numbered tar left behind would be read
        # as data by expand_shards while sizes.json no longer counted it.
        stale = sorted(self.out_dir.glob(f"{prefix}-*.tar"))
        if stale:
            raise FileExistsError(f"{self.out_dir} already holds {len(stale)} '{prefix}-*.tar' shard(s) "
                                  f"(e.g. {stale[0].name}); write to an empty folder or remove them first")

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Close even on error: the shards written so far stay valid tars and sizes.json tells their true counts.
        self.close()

    def write(self, key: str, image: bytes, image_ext: str, captions: str | list[str],
              meta: dict[str, Any] | None = None, extra: dict[str, bytes] | None = None) -> None:
        """Add one sample: ``<key>.<image_ext>``, ``<key>.txt`` (captions, newline-joined), ``<key>.json`` if meta.

        ``extra`` maps further extensions (e.g. ``"neg.json"``, ``"flac"``) to raw bytes stored as-is.
        """
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        self._check_key(key)
        caption_text = captions if isinstance(captions, str) else "\n".join(captions)
        if not caption_text.strip():
            raise ValueError(f"sample {key!r} has an empty caption")
        ext = image_ext.lower().lstrip(".")
        if not ext or "/" in ext or ext in ("txt", "json"):
            raise ValueError(f"sample {key!r}: invalid image extension {image_ext!r}")
        members: dict[str, Any] = {"__key__": key, ext: bytes(image), "txt": caption_text.encode("utf-8")}
        if meta is not None:
            members["json"] = json.dumps(meta, ensure_ascii=False).encode("utf-8")
        for extra_ext, data in (extra or {}).items():
            if not extra_ext or "/" in extra_ext or extra_ext in members:
                raise ValueError(f"sample {key!r}: invalid or duplicate extra member extension {extra_ext!r}")
            members[extra_ext] = bytes(data)
        if self._tar is None or self.counts[-1] >= self.samples_per_shard:
            self._next_shard()
        assert self._tar is not None
        self._tar.write(members)
        self._keys.add(key)
        self.counts[-1] += 1
        self.total += 1

    def close(self) -> None:
        """Finish the open shard and write ``sizes.json`` (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        update_sizes(self.out_dir, {path.name: count for path, count in zip(self.shards, self.counts)})

    def _check_key(self, key: str) -> None:
        # webdataset splits a member name at the first dot after the last slash, so a dot or slash in the key
        # would silently split one sample into several (or nest it in a folder) on reading.
        if not isinstance(key, str) or not key:
            raise ValueError(f"sample key must be a non-empty string, got {key!r}")
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")

    def _next_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
        path = self.out_dir / f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tar = wds.TarWriter(str(path), encoder=False, mtime=_TAR_MTIME)
        self.shards.append(path)
        self.counts.append(0)
