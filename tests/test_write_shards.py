"""The shard-writing CLI: folders and CSV / JSONL / Parquet manifests become shards with stable keys."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmpretrain.cli import main as mmpretrain_main
from mmpretrain.data.safe_tar import ShardFailure, read_shards
from mmpretrain.data.shards import SIZES_FILE, RawSample, expand_shards
from mmpretrain.data.decode import IMAGE_EXTENSIONS, TEXT_EXTENSIONS, decode_sample
from mmpretrain.data_tools.write_shards import iter_folder_pairs, iter_manifest_rows, main


def _save_image(path: Path, colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (5, 4), colour).save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _read(out: Path) -> list[RawSample]:
    samples = list(read_shards(expand_shards(str(out)), IMAGE_EXTENSIONS + TEXT_EXTENSIONS + ("json",)))
    assert not any(isinstance(s, ShardFailure) for s in samples)
    return samples


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    _save_image(src / "b" / "cat.png", (255, 0, 0))
    (src / "b" / "cat.txt").write_text("a red cat\n")
    _save_image(src / "a.jpeg", (0, 255, 0), "JPEG")
    (src / "a.txt").write_text("a green thing\nanother caption\n")
    _save_image(src / "b" / "nocaption.png", (0, 0, 255))  # no .txt: reported and skipped
    _save_image(src / "c" / "dog.webp", (9, 9, 9), "WEBP")
    (src / "c" / "dog.txt").write_text("a dog")
    (src / "notes.md").write_text("not an image")
    return src


def test_folder_pairs_are_sorted_and_missing_captions_reported(image_folder: Path) -> None:
    missing: list[Path] = []
    pairs = list(iter_folder_pairs(image_folder, on_missing=missing.append))
    assert [p.meta["source"] for p in pairs] == ["a.jpeg", "b/cat.png", "c/dog.webp"]
    assert [p.index for p in pairs] == [0, 1, 3]  # the index counts the skipped image: keys stay stable
    assert missing == [image_folder / "b" / "nocaption.png"]


def test_folder_mode_writes_shards_and_counts_skipped(image_folder: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["folder", str(image_folder), str(out), "--samples-per-shard", "2"]) == 0
    captured = capsys.readouterr()
    assert "nocaption.png" in captured.err
    assert "skipped 1 images" in captured.out
    raws = _read(out)
    assert [r["__key__"] for r in raws] == ["000000000", "000000001", "000000003"]
    assert raws[0]["jpg"] == (image_folder / "a.jpeg").read_bytes()  # .jpeg stored as .jpg, bytes unchanged
    assert raws[1]["png"] == (image_folder / "b" / "cat.png").read_bytes()
    assert raws[2]["webp"] == (image_folder / "c" / "dog.webp").read_bytes()
    assert decode_sample(raws[0]).captions == ["a green thing", "another caption"]
    assert json.loads(raws[1]["json"]) == {"source": "b/cat.png"}
    assert json.loads((out / SIZES_FILE).read_text()) == {"shard-000000.tar": 2, "shard-000001.tar": 1}


def _manifest_rows(root: Path) -> list[dict]:
    rows = []
    for i, colour in enumerate([(1, 2, 3), (4, 5, 6), (7, 8, 9)]):
        _save_image(root / "imgs" / f"{i}.png", colour)
        rows.append({"path": f"imgs/{i}.png", "text": f"caption {i}", "license": f"cc-{i}"})
    return rows


def _write_manifest(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_mode_reads_each_format(tmp_path: Path, suffix: str) -> None:
    rows = _manifest_rows(tmp_path / "data")
    manifest = tmp_path / "data" / f"pairs{suffix}"
    _write_manifest(manifest, rows)
    out = tmp_path / "out"
    assert main(["manifest", str(manifest), str(out), "--image-column", "path", "--caption-column", "text"]) == 0
    raws = _read(out)
    assert [r["__key__"] for r in raws] == ["000000000", "000000001", "000000002"]
    for raw, row in zip(raws, rows):
        assert raw["png"] == (tmp_path / "data" / row["path"]).read_bytes()
        assert raw["txt"].decode() == row["text"]
        assert json.loads(raw["json"]) == {"source": row["path"], "license": row["license"]}


def test_manifest_paths_resolve_against_root(tmp_path: Path) -> None:
    rows = _manifest_rows(tmp_path / "images_live_here")
    manifest = tmp_path / "elsewhere" / "pairs.jsonl"
    manifest.parent.mkdir()
    _write_manifest(manifest, rows)
    pairs = list(iter_manifest_rows(manifest, "path", "text", root=tmp_path / "images_live_here"))
    assert [p.image for p in pairs] == [tmp_path / "images_live_here" / r["path"] for r in rows]


def test_manifest_caption_lists_become_several_captions(tmp_path: Path) -> None:
    _save_image(tmp_path / "x.png", (1, 1, 1))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "x.png", "caption": ["one", "two"]}) + "\n")
    out = tmp_path / "out"
    assert main(["manifest", str(manifest), str(out)]) == 0
    assert decode_sample(_read(out)[0]).captions == ["one", "two"]


def test_missing_column_error_names_it_and_lists_columns(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    rows = _manifest_rows(tmp_path)
    manifest = tmp_path / "pairs.csv"
    _write_manifest(manifest, rows)
    assert main(["manifest", str(manifest), str(tmp_path / "out"), "--image-column", "path"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: column 'caption' not in pairs.csv; available columns: path, text, license"
    assert not (tmp_path / "out").exists()


def test_missing_image_error_names_the_file_and_writes_nothing(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    rows = _manifest_rows(tmp_path)
    rows.append({"path": "imgs/gone.png", "text": "lost", "license": "x"})
    manifest = tmp_path / "pairs.csv"
    _write_manifest(manifest, rows)
    out = tmp_path / "out"
    assert main(["manifest", str(manifest), str(out), "--image-column", "path", "--caption-column", "text"]) == 2
    err = capsys.readouterr().err
    assert "image file not found" in err and "gone.png" in err and "row 3" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()  # every row is checked before the first shard is written


def test_reached_as_mmpretrain_write_shards(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert mmpretrain_main(["write-shards", "folder", str(image_folder), str(out)]) == 0
    assert json.loads((out / SIZES_FILE).read_text()) == {"shard-000000.tar": 3}
