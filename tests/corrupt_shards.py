"""A shard set with every kind of bad sample and broken shard the pipeline must survive, and what to expect.

Clean samples are 16x16 PNGs whose pixel (0, 0) encodes their id (red * 256 + green), so a test can tell
exactly which clean samples arrived. sizes.json holds the counts the shards had before they were broken, as a
writer would have recorded them.
"""

from __future__ import annotations

import collections
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass
class CorruptShards:
    folder: Path
    clean_ids: set[int]                       # every clean sample that is readable: each must arrive
    skips: dict[str, int]                     # expected skip counts per reason, for one pass over the data
    bad_events: set[tuple[str, str]]          # (reason, shard file name) of every skip event
    last_clean_shard: str                     # the shard with only clean samples


def _png(sample_id: int, size: tuple[int, int] = (16, 16), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (sample_id // 256, sample_id % 256, 0) if mode == "RGB" else 0).save(out, "PNG")
    return out.getvalue()


def _jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def _bomb() -> bytes:
    """A 9000x9000 PNG (81M pixels, over the 50M default limit) that compresses to a few kilobytes."""
    out = io.BytesIO()
    Image.new("1", (9000, 9000)).save(out, "PNG")
    return out.getvalue()


def _write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))


def write_corrupt_shards(folder: Path) -> CorruptShards:
    folder.mkdir(parents=True, exist_ok=True)
    next_id = iter(range(1, 10_000))
    clean_ids: set[int] = set()

    def clean(extra: dict[str, bytes] | None = None) -> tuple[str, dict[str, bytes]]:
        i = next(next_id)
        clean_ids.add(i)
        return f"clean{i:04d}", {"png": _png(i), "txt": f"a picture number {i}".encode(), **(extra or {})}

    jpeg = _jpeg()
    bad_samples = {  # reason -> members of a bad sample
        "image_unreadable": [{"jpg": b"", "txt": b"zero bytes"}, {"jpg": b"<html>404</html>", "txt": b"not an image"},
                             {"jpg": jpeg[: len(jpeg) // 2], "txt": b"truncated jpeg"}],
        "image_too_large": [{"png": _bomb(), "txt": b"a decompression bomb"}],
        "image_too_small": [{"png": _png(0, (1, 1)), "txt": b"a tracking pixel"}],
        "aspect_ratio": [{"png": _png(0, (400, 10)), "txt": b"a banner"}],
        "image_missing": [{"txt": b"a caption alone"}, {"pyd": b"not even read"}],
        "caption_missing": [{"png": _png(0)}],
        "caption_empty": [{"png": _png(0), "txt": b"  \n \t"}],
        "caption_not_utf8": [{"png": _png(0), "txt": b"caf\xe9 \xff\xfe"}],
    }
    mixed: list[tuple[str, dict[str, bytes]]] = []
    bad_events: set[tuple[str, str]] = set()
    skips: collections.Counter = collections.Counter()
    for reason, variants in bad_samples.items():
        for n, members in enumerate(variants):
            mixed.append(clean())
            mixed.append((f"bad-{reason}-{n}", members))
            skips[reason] += 1
    mixed.append(clean({"pth": b"ignored member"}))  # an undeclared member does not spoil a clean sample
    names = [f"shard-{i:06d}.tar" for i in range(4)]
    _write_tar(folder / names[0], mixed)
    bad_events |= {(reason, names[0]) for reason in bad_samples}

    # A tar cut inside its fourth sample's image: the three whole samples before the cut arrive, three are lost.
    whole = [clean() for _ in range(6)]
    _write_tar(folder / names[1], whole)
    data = (folder / names[1]).read_bytes()
    # 3 samples x 2 members x (512-byte header + data padded to 512), then the 4th image's header and 40 bytes
    (folder / names[1]).write_bytes(data[: 3 * 2 * 1024 + 512 + 40])
    lost_ids = {int(key[5:]) for key, _ in whole[3:]}
    clean_ids -= lost_ids
    skips["shard_truncated"] += 3
    bad_events.add(("shard_truncated", names[1]))

    # Not a tar at all: sizes.json says it held 4 samples, all lost.
    (folder / names[2]).write_bytes(b"\x00garbage" * 100)
    skips["shard_unreadable"] += 4
    bad_events.add(("shard_unreadable", names[2]))

    _write_tar(folder / names[3], [clean() for _ in range(5)])
    sizes = {names[0]: len(mixed), names[1]: 6, names[2]: 4, names[3]: 5}
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return CorruptShards(folder, clean_ids, dict(skips), bad_events, names[3])
