"""ShardWriter writes standard WebDataset shards that our tar reader and webdataset itself read back unchanged."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds
from PIL import Image

from mmpretrain.data.safe_tar import ShardFailure, read_shards
from mmpretrain.data.shard_writer import ShardWriter
from mmpretrain.data.shards import SIZES_FILE, RawSample, expand_shards, read_sizes
from mmpretrain.data.decode import IMAGE_EXTENSIONS, TEXT_EXTENSIONS, decode_sample

MEMBERS = frozenset(IMAGE_EXTENSIONS + TEXT_EXTENSIONS + ("json", "neg.json"))


def _image_bytes(index: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (index * 20 % 256, 10, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def _read(shards: list[str]) -> list[RawSample]:
    samples = list(read_shards(shards, MEMBERS))
    assert not any(isinstance(s, ShardFailure) for s in samples)
    return samples


def _write_samples(out: Path, n: int, per_shard: int) -> list[dict[str, Any]]:
    samples = []
    with ShardWriter(out, samples_per_shard=per_shard) as writer:
        for i in range(n):
            fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
            sample: dict[str, Any] = {"key": f"s{i:04d}", "image": _image_bytes(i, fmt), "image_ext": ext,
                      "captions": [f"caption {i}", f"another caption {i}"] if i % 3 == 0 else f"caption {i}",
                      "meta": {"i": i, "name": "ünïcode"}}
            writer.write(**sample, extra={"neg.json": json.dumps([f"not {i}"]).encode()})
            samples.append(sample)
    assert writer.total == n
    return samples


def test_round_trip_is_byte_equal_through_the_tar_reader(tmp_path: Path) -> None:
    samples = _write_samples(tmp_path, n=7, per_shard=3)
    raws = _read(expand_shards(str(tmp_path)))
    assert [r["__key__"] for r in raws] == [s["key"] for s in samples]
    for raw, sample in zip(raws, samples):
        assert raw[sample["image_ext"]] == sample["image"]
        captions = sample["captions"]
        assert raw["txt"].decode() == (captions if isinstance(captions, str) else "\n".join(captions))
        assert json.loads(raw["json"]) == sample["meta"]
        assert json.loads(raw["neg.json"]) == [f"not {sample['meta']['i']}"]
        decoded = decode_sample(raw)
        assert decoded.captions == ([captions] if isinstance(captions, str) else captions)
        assert decoded.image.size == (8, 6)


def test_round_trip_through_plain_webdataset(tmp_path: Path) -> None:
    samples = _write_samples(tmp_path, n=5, per_shard=2)
    dataset = wds.WebDataset([str(p) for p in sorted(tmp_path.glob("*.tar"))], shardshuffle=False)
    read = {s["__key__"]: s for s in dataset}
    assert set(read) == {s["key"] for s in samples}
    for sample in samples:
        assert read[sample["key"]][sample["image_ext"]] == sample["image"]


def test_fixed_samples_per_shard_and_sizes_json(tmp_path: Path) -> None:
    _write_samples(tmp_path, n=7, per_shard=3)
    names = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    sizes = json.loads((tmp_path / SIZES_FILE).read_text())
    assert sizes == {"shard-000000.tar": 3, "shard-000001.tar": 3, "shard-000002.tar": 1}
    for name, count in sizes.items():  # the recorded counts are the true counts
        assert len(_read([str(tmp_path / name)])) == count
    assert read_sizes(expand_shards(str(tmp_path))) == 7


def test_writer_exposes_shards_and_total_and_custom_prefix(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, samples_per_shard=2, prefix="train") as writer:
        for i in range(4):
            writer.write(f"k{i}", b"not really an image", "webp", "a caption")
    assert writer.shards == [tmp_path / "train-000000.tar", tmp_path / "train-000001.tar"]
    assert writer.total == 4
    assert all(p.exists() for p in writer.shards)


@pytest.mark.parametrize("key", ["", "a.b", "dir/key", "img.0001"])
def test_bad_keys_are_rejected_naming_the_key(tmp_path: Path, key: str) -> None:
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match=repr(key).replace(".", r"\.")):
            writer.write(key, b"x", "png", "caption")


def test_duplicate_keys_are_rejected(tmp_path: Path) -> None:
    with ShardWriter(tmp_path) as writer:
        writer.write("same", b"x", "png", "caption")
        with pytest.raises(ValueError, match="duplicate sample key 'same'"):
            writer.write("same", b"y", "png", "caption")
    assert json.loads((tmp_path / SIZES_FILE).read_text()) == {"shard-000000.tar": 1}


def test_empty_caption_is_rejected(tmp_path: Path) -> None:
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="empty caption"):
            writer.write("k", b"x", "png", ["", "  "])


def test_refuses_to_write_over_existing_shards(tmp_path: Path) -> None:
    _write_samples(tmp_path, n=2, per_shard=5)
    with pytest.raises(FileExistsError, match="shard-000000.tar"):
        ShardWriter(tmp_path)


def test_reads_img2dataset_shards_unchanged(tmp_path: Path) -> None:
    # img2dataset's layout: numeric keys, .jpg/.txt/.json members, written by an ordinary tar writer.
    jpg = _image_bytes(3, "JPEG")
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        for key in ("000000000", "000000001"):
            members = {"jpg": jpg, "txt": f"caption of {key}".encode(),
                       "json": json.dumps({"key": key, "status": "success", "url": "http://x/y.jpg"}).encode()}
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    raws = _read([str(shard)])
    assert [r["__key__"] for r in raws] == ["000000000", "000000001"]
    assert raws[0]["jpg"] == jpg
    sample = decode_sample(raws[1])
    assert sample.key == "000000001"
    assert sample.captions == ["caption of 000000001"]
    assert sample.meta["status"] == "success"
    assert sample.image.mode == "RGB" and sample.image.size == (8, 6)
