"""Readers for compositional test sets from local files, one per published format, into `CompositionalData`.

Formats (`format:` of a `kind: compositional` task; `data` and `images` as below):

- ``sugarcrepe``: `data` a folder of SugarCrepe's per-subset JSON files (``replace_obj.json`` ...; clip_benchmark's
  root layout) or one such file; `images` the COCO val2017 folder (default ``<data>/val2017``). A file maps ids
  to ``{"filename", "caption", "negative_caption"}``; the subset (the file's stem) is the negative's type.
- ``aro-relation`` / ``aro-attribution``: `data` ARO's ``visual_genome_relation.json`` /
  ``visual_genome_attribution.json``, a list of ``{"image_path" (or "image_id"), "bbox_x", "bbox_y", "bbox_w",
  "bbox_h", "true_caption", "false_caption", ...}``; `images` the Visual Genome image folder. The image is cropped
  to the box, as ARO does. Types: ``relation`` / ``attribute``.
- ``coco-order`` / ``flickr-order``: `data` the Karpathy-split test JSON ARO reads (``coco_karpathy_test.json``,
  ``flickr30k_test.json``): a list of ``{"image", "caption": str or [str]}``; each caption is one item with word-order
  negatives (see shuffles.py), or the entry's own ``"negatives"``. Types: the shuffles, and ``order`` (the
  positive beats all of them: ARO's number).
- ``winoground``: `data` Winoground's ``examples.jsonl`` (``{"id", "caption_0", "caption_1", "image_0",
  "image_1"}``), `images` its image folder (``<name>.png``).
- ``shards``: `data` a shard spec of samples ``<key>.{png,jpg,...}`` + ``<key>.txt`` (the positive: its first
  line) + ``<key>.neg.json``, a JSON list of ``{"text", "type"}`` (a plain string is type ``negative``, so a
  training set's negatives read too). This is what the compositional builder writes.

`subsets` keeps some types: SugarCrepe subset files, a shard set's or an order set's negative types.

An annotation file that is missing or not the format's JSON fails the task (DataError, one line); a bad entry or
a missing/unreadable image is a counted skip of its item, with the reasons of data/skips.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from mmpretrain.data.decode import IMAGE_EXTENSIONS, decode_captions, first_member
from mmpretrain.data.safe_tar import DEFAULT_MAX_MEMBER_BYTES
from mmpretrain.data.shards import RawSample
from mmpretrain.data.skips import SampleSkipped, SkipEvent
from mmpretrain.errors import DataError
from mmpretrain.eval.compositional.data import (ChoiceItem, CompositionalData, GroupItem, ImageRef, ImageTable,
                                                image_under)
from mmpretrain.eval.compositional.shuffles import order_negatives, pre_caption
from mmpretrain.eval.datasets import _collect, _shard_attempts

FORMATS = ("sugarcrepe", "aro-relation", "aro-attribution", "coco-order", "flickr-order", "winoground", "shards")
SUGARCREPE_SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
WINOGROUND_TYPES = ("text", "image", "group")
ORDER_MAX_WORDS = 30  # ARO's COCO_Order / Flickr30k_Order
Item = Union[ChoiceItem, GroupItem]


def _load_json(path: Path, what: str) -> Any:
    """A whole annotation file (``.jsonl``: one object a line); a missing or broken one fails the set."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except FileNotFoundError:
        raise DataError(f"{what}: {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{what}: {path} is not readable JSON ({type(e).__name__}: {e})") from None


def _text(entry: dict[str, Any], field: str, reason: str) -> str:
    value = entry.get(field)
    if not isinstance(value, str) or not value.strip():
        raise SampleSkipped(reason, f"{field}={value!r} is not a caption")
    return value.strip()


def _attempts(source: str, entries: Iterable[tuple[str, Any]], parse: Callable[[Any], Item]
              ) -> Iterator[Union[Item, SkipEvent]]:
    """Each (key, entry) parsed into an item, or the SkipEvent of one that is bad (counted against `source`)."""
    for key, entry in entries:
        try:
            if not isinstance(entry, dict):
                raise SampleSkipped("label_invalid", f"an entry is a JSON object, got {type(entry).__name__}")
            item = parse(entry)
            item.key = key
        except SampleSkipped as e:
            yield SkipEvent(e.reason, source, 1, f"{key} in {source}: {e.detail}", key)
        else:
            yield item


def _data(items: list[Item], table: ImageTable, skips: Any, joint_type: Optional[str] = None) -> CompositionalData:
    return CompositionalData(images=table.refs, choices=[i for i in items if isinstance(i, ChoiceItem)],
                             groups=[i for i in items if isinstance(i, GroupItem)], skips=skips,
                             joint_type=joint_type)


def sugarcrepe_files(data: str, subsets: Sequence[str]) -> list[Path]:
    """The annotation files to read: `data` itself, or its ``<subset>.json`` files (all present by default)."""
    path = Path(data)
    if path.is_file():
        return [path]
    if subsets:
        return [path / f"{subset}.json" for subset in subsets]
    found = sorted(path.glob("*.json"))
    if not found:
        raise DataError(f"sugarcrepe: {data} holds no <subset>.json file (e.g. {SUGARCREPE_SUBSETS[0]}.json)")
    return found


def read_sugarcrepe(data: str, images: Optional[str], subsets: Sequence[str] = (),
                    max_samples: Optional[int] = None) -> CompositionalData:
    root = Path(images) if images else (Path(data) if Path(data).is_dir() else Path(data).parent) / "val2017"
    table = ImageTable()

    def entries() -> Iterator[Union[Item, SkipEvent]]:
        for file in sugarcrepe_files(data, subsets):
            annotations = _load_json(file, "sugarcrepe")
            if not isinstance(annotations, dict):
                raise DataError(f"sugarcrepe: {file} is not SugarCrepe's JSON (an object of id -> entry)")
            subset = file.stem

            def parse(entry: dict[str, Any], subset: str = subset) -> Item:
                positive = _text(entry, "caption", "caption_missing")
                negative = _text(entry, "negative_caption", "negatives_invalid")
                name = entry.get("filename")
                if not isinstance(name, str) or not name:
                    raise SampleSkipped("image_missing", f"filename={name!r}")
                return ChoiceItem(table.add(image_under(root, name)), positive, [(negative, subset)])

            yield from _attempts(str(file), ((f"{subset}/{k}", v) for k, v in annotations.items()), parse)

    items, skips = _collect(entries(), max_samples)
    return _data(items, table, skips)


def _box(entry: dict[str, Any]) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(entry[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
    except (KeyError, TypeError, ValueError):
        raise SampleSkipped("label_invalid", "bbox_x/bbox_y/bbox_w/bbox_h missing or not numbers") from None
    return x, y, x + w, y + h


def _aro_image_name(entry: dict[str, Any]) -> str:
    name = entry.get("image_path")
    if isinstance(name, str) and name:
        return name
    if isinstance(entry.get("image_id"), (int, str)) and not isinstance(entry.get("image_id"), bool):
        return f"{entry['image_id']}.jpg"
    raise SampleSkipped("image_missing", "neither image_path nor image_id")


def read_aro_vg(data: str, images: str, kind: str, max_samples: Optional[int] = None) -> CompositionalData:
    """ARO's VG-Relation (`kind` "relation") or VG-Attribution ("attribute")."""
    annotations = _load_json(Path(data), f"aro-{kind}")
    if not isinstance(annotations, list):
        raise DataError(f"aro-{kind}: {data} is not ARO's JSON (a list of entries)")
    root, table = Path(images), ImageTable()

    def parse(entry: dict[str, Any]) -> Item:
        positive = _text(entry, "true_caption", "caption_missing")
        negative = _text(entry, "false_caption", "negatives_invalid")
        ref = image_under(root, _aro_image_name(entry))
        return ChoiceItem(table.add(ImageRef(ref.path, _box(entry))), positive, [(negative, kind)])

    items, skips = _collect(_attempts(data, ((str(i), e) for i, e in enumerate(annotations)), parse), max_samples)
    return _data(items, table, skips)


def _typed_negatives(value: Any, default_type: str) -> list[tuple[str, str]]:
    """A JSON list of ``{"text", "type"}`` objects or plain strings (type `default_type`) as (text, type) pairs."""
    if not isinstance(value, list):
        raise SampleSkipped("negatives_invalid", "negatives must be a JSON list")
    negatives = []
    for negative in value:
        if isinstance(negative, str):
            text, kind = negative, default_type
        elif isinstance(negative, dict) and isinstance(negative.get("text"), str):
            kind = negative.get("type", default_type)
            text = negative["text"]
            if not isinstance(kind, str) or not kind:
                raise SampleSkipped("negatives_invalid", f"type={kind!r} is not a name")
        else:
            raise SampleSkipped("negatives_invalid", "each negative is a string or {\"text\", \"type\"}")
        if text.strip():
            negatives.append((text.strip(), kind))
    return negatives


def _keep(negatives: list[tuple[str, str]], types: Sequence[str]) -> list[tuple[str, str]]:
    kept = [n for n in negatives if not types or n[1] in types]
    if not kept:
        raise SampleSkipped("negatives_invalid", "no negative" + (f" of the types {list(types)}" if types else ""))
    return kept


def read_order(data: str, images: str, name: str, types: Sequence[str] = (),
               max_samples: Optional[int] = None) -> CompositionalData:
    """COCO-Order / Flickr-Order (`name`): one item per caption, its negatives generated or given."""
    annotations = _load_json(Path(data), name)
    if not isinstance(annotations, list):
        raise DataError(f"{name}: {data} is not a Karpathy-split JSON (a list of {{image, caption}} entries)")
    root, table = Path(images), ImageTable()

    def entries() -> Iterator[tuple[str, Any]]:
        for index, entry in enumerate(annotations):
            captions = entry.get("caption") if isinstance(entry, dict) else None
            for c, caption in enumerate(captions if isinstance(captions, list) else [captions]):
                yield f"{index}/{c}", {**entry, "caption": caption} if isinstance(entry, dict) else entry

    def parse(entry: dict[str, Any]) -> Item:
        positive = pre_caption(_text(entry, "caption", "caption_missing"), ORDER_MAX_WORDS)
        given = entry.get("negatives")
        negatives = _typed_negatives(given, "order") if given is not None else order_negatives(positive)
        image = entry.get("image")
        if not isinstance(image, str) or not image:
            raise SampleSkipped("image_missing", f"image={image!r}")
        return ChoiceItem(table.add(image_under(root, image)), positive, _keep(negatives, types))

    items, skips = _collect(_attempts(data, entries(), parse), max_samples)
    return _data(items, table, skips, joint_type="order")


def _winoground_image(root: Path, name: Any) -> ImageRef:
    if not isinstance(name, str) or not name:
        raise SampleSkipped("image_missing", f"image name {name!r}")
    if Path(name).suffix.lower().lstrip(".") in IMAGE_EXTENSIONS:
        return image_under(root, name)
    for ext in IMAGE_EXTENSIONS:  # Winoground names images without extension; its files are .png
        if (root / f"{name}.{ext}").is_file():
            return image_under(root, f"{name}.{ext}")
    return image_under(root, f"{name}.png")


def read_winoground(data: str, images: str, max_samples: Optional[int] = None) -> CompositionalData:
    annotations = _load_json(Path(data), "winoground")
    if not isinstance(annotations, list):
        raise DataError(f"winoground: {data} is not Winoground's examples (a JSON list or JSON lines)")
    root, table = Path(images), ImageTable()

    def parse(entry: dict[str, Any]) -> Item:
        captions = (_text(entry, "caption_0", "caption_missing"), _text(entry, "caption_1", "caption_missing"))
        first = table.add(_winoground_image(root, entry.get("image_0")))
        second = table.add(_winoground_image(root, entry.get("image_1")))
        return GroupItem((first, second), captions)

    keyed = ((str(e.get("id", i)) if isinstance(e, dict) else str(i), e) for i, e in enumerate(annotations))
    items, skips = _collect(_attempts(data, keyed, parse), max_samples)
    return _data(items, table, skips)


SHARD_MEMBERS = frozenset(IMAGE_EXTENSIONS + ("txt", "neg.json"))


def read_shards(spec: str, types: Sequence[str] = (), max_samples: Optional[int] = None,
                max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> CompositionalData:
    """A compositional shard set (the builder's output; layout in the module docstring)."""
    table = ImageTable()

    def parse(raw: RawSample) -> Item:
        if raw.get("__oversized__"):
            raise SampleSkipped("member_too_large", raw["__oversized__"])
        data = first_member(raw, IMAGE_EXTENSIONS)
        if data is None:
            raise SampleSkipped("image_missing", f"no {'/'.join(IMAGE_EXTENSIONS)} member")
        positive = decode_captions(raw.get("txt"))[0]
        if raw.get("neg.json") is None:
            raise SampleSkipped("negatives_invalid", "no .neg.json member")
        try:
            listed = json.loads(raw["neg.json"].decode("utf-8"))
        except ValueError as e:
            raise SampleSkipped("negatives_invalid", f".neg.json: {e}") from None
        negatives = _keep(_typed_negatives(listed, "negative"), types)
        key = f"{raw.get('__url__', '?')}/{raw.get('__key__', '?')}"
        return ChoiceItem(table.add(ImageRef(path=key, data=data)), positive, negatives, key)

    items, skips = _collect(_shard_attempts(spec, SHARD_MEMBERS, parse, max_member_bytes), max_samples)
    return _data(items, table, skips)


def read_compositional(format: str, data: str, images: Optional[str] = None, subsets: Sequence[str] = (),
                       max_samples: Optional[int] = None) -> CompositionalData:
    """The set of `format` (one of FORMATS) read from `data` and `images`."""
    if format == "sugarcrepe":
        return read_sugarcrepe(data, images, subsets, max_samples)
    if format == "shards":
        return read_shards(data, subsets, max_samples)
    assert images, format  # validated with the task
    if format in ("aro-relation", "aro-attribution"):
        return read_aro_vg(data, images, "relation" if format == "aro-relation" else "attribute", max_samples)
    if format in ("coco-order", "flickr-order"):
        return read_order(data, images, format, subsets, max_samples)
    if format == "winoground":
        return read_winoground(data, images, max_samples)
    raise ValueError(f"unknown compositional format {format!r}")
