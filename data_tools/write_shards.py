"""Turn raw image-caption pairs into WebDataset shards (plus sizes.json) that mmpretrain trains on.

    mmpretrain write-shards folder SRC OUT [--samples-per-shard N]
    mmpretrain write-shards manifest FILE OUT [--image-column image] [--caption-column caption] [--root DIR]

(or `python -m mmpretrain.data_tools.write_shards ...`: this folder installs as mmpretrain.data_tools).

Folder mode pairs every image under SRC (recursively) with the same-stem ``.txt`` caption file; manifest mode
reads a CSV, JSONL or Parquet table with an image-path column and a caption column. Inputs are taken in a
deterministic order and each sample's key is its zero-padded index in that order, so rerunning gives the same
keys; the original path goes into the sample's JSON metadata as ``source``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mmpretrain.data.shard_writer import ShardWriter
from mmpretrain.data.decode import IMAGE_EXTENSIONS

KEY_DIGITS = 9  # room for a billion samples, like img2dataset's keys


class InputError(ValueError):
    """Bad input the user can fix (missing column, missing file): reported as one line, no traceback."""


@dataclass
class Pair:
    """One image-caption pair to write: its position in the input order, image file, caption(s), metadata."""

    index: int
    image: Path
    captions: str | list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def iter_folder_pairs(src: str | Path, on_missing: Callable[[Path], None] | None = None) -> Iterator[Pair]:
    """Yield images under `src` (recursively, sorted by relative path) that have a same-stem ``.txt`` caption.

    Images without a caption file (or with an empty one) are passed to `on_missing` and skipped; the index
    still counts them, so a pair's key does not change when captions are added for other images.
    """
    src = Path(src)
    if not src.is_dir():
        raise InputError(f"source folder not found: {src}")
    images = sorted((p for p in src.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS),
                    key=lambda p: p.relative_to(src).as_posix())
    for index, image in enumerate(images):
        caption_file = image.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        if not caption:
            if on_missing is not None:
                on_missing(image)
            continue
        yield Pair(index, image, caption, {"source": image.relative_to(src).as_posix()})


def _read_table(path: Path) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """Column names and rows of a CSV, JSONL or Parquet manifest, chosen by file extension."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheet CSVs start with a BOM
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), iter(rows)
    if suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        columns = list(dict.fromkeys(k for row in rows for k in row))
        return columns, iter(rows)
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq  # only parquet manifests need pyarrow

        table = pq.read_table(path)
        return list(table.column_names), iter(table.to_pylist())
    raise InputError(f"unsupported manifest type {path.suffix!r} for {path} (expected .csv, .jsonl or .parquet)")


def _jsonable(value: Any) -> Any:
    # Parquet cells may be dates, decimals or bytes; metadata must be plain JSON.
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def iter_manifest_rows(manifest: str | Path, image_column: str = "image", caption_column: str = "caption",
                       root: str | Path | None = None) -> Iterator[Pair]:
    """Yield one Pair per manifest row, in file order; relative image paths resolve against `root` (default:
    the manifest's folder). Other columns are kept in the metadata next to ``source``.

    A caption cell may hold a list of strings (JSONL / Parquet) for several captions per image.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputError(f"manifest not found: {manifest}")
    base = Path(root) if root is not None else manifest.parent
    columns, rows = _read_table(manifest)
    for column in (image_column, caption_column):
        if column not in columns:
            raise InputError(f"column {column!r} not in {manifest.name}; available columns: {', '.join(columns)}")
    for index, row in enumerate(rows):
        source, captions = row.get(image_column), row.get(caption_column)
        if not source:
            raise InputError(f"row {index} of {manifest.name} has no {image_column!r} value")
        image = Path(source) if Path(source).is_absolute() else base / source
        if not image.is_file():
            raise InputError(f"image file not found: {image} (row {index} of {manifest.name})")
        if isinstance(captions, list):
            captions = [str(c) for c in captions]
        elif captions is None or not str(captions).strip():
            raise InputError(f"row {index} of {manifest.name} has an empty {caption_column!r} value")
        else:
            captions = str(captions)
        meta = {k: _jsonable(v) for k, v in row.items() if k not in (image_column, caption_column)}
        meta["source"] = str(source)  # set last: the input path always wins over a column of the same name
        yield Pair(index, image, captions, meta)


def write_pairs(pairs: Iterator[Pair], out: str | Path, samples_per_shard: int, total: int | None = None
                ) -> ShardWriter:
    """Write pairs into shards under `out` with a progress bar; image bytes are copied unchanged."""
    with ShardWriter(out, samples_per_shard) as writer:
        for pair in tqdm(pairs, total=total, unit="img", desc=f"writing {out}"):
            ext = pair.image.suffix.lower().lstrip(".")
            ext = "jpg" if ext == "jpeg" else ext  # the canonical WebDataset extension; bytes stay as they are
            writer.write(f"{pair.index:0{KEY_DIGITS}d}", pair.image.read_bytes(), ext, pair.captions, pair.meta)
    return writer


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mmpretrain write-shards",
                                     description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    folder = sub.add_parser("folder", help="a folder of images with same-stem .txt captions")
    folder.add_argument("src", type=Path)
    manifest = sub.add_parser("manifest", help="a CSV, JSONL or Parquet table of image paths and captions")
    manifest.add_argument("file", type=Path)
    manifest.add_argument("--image-column", default="image")
    manifest.add_argument("--caption-column", default="caption")
    manifest.add_argument("--root", type=Path, default=None, help="folder relative image paths resolve against "
                                                                   "(default: the manifest's folder)")
    for p in (folder, manifest):
        p.add_argument("out", type=Path)
        p.add_argument("--samples-per-shard", type=int, default=1000)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 2 bad input)."""
    args = _parse_args(argv)
    skipped: list[Path] = []

    def report_missing(image: Path) -> None:
        skipped.append(image)
        tqdm.write(f"skipping {image}: no caption ({image.with_suffix('.txt').name} missing or empty)",
                   file=sys.stderr)

    try:
        if args.mode == "folder":
            pairs = iter_folder_pairs(args.src, on_missing=report_missing)
        else:
            pairs = iter_manifest_rows(args.file, args.image_column, args.caption_column, args.root)
        # Read and check every input before the first shard is written, so bad input leaves no partial output.
        checked = list(pairs)
        writer = write_pairs(iter(checked), args.out, args.samples_per_shard, total=len(checked))
    except (ValueError, FileExistsError) as error:  # InputError, or ShardWriter rejecting a key or caption
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {writer.total} samples in {len(writer.shards)} shards to {args.out}"
          + (f"; skipped {len(skipped)} images without a caption" if args.mode == "folder" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
