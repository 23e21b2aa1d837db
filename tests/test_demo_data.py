"""The embedded demo data: right sizes, held-out validation, and captions that are true of their images."""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from mmpretrain.data.demo_data import (COLOURS, COLOUR_RGB, DIGIT_WORDS, SHAPES, ShapeObject, generate_demo_data,
                                       relation, render_scene, sample_scene)
from mmpretrain.data.safe_tar import ShardFailure, read_shards
from mmpretrain.data.shards import expand_shards, read_sizes
from mmpretrain.data.decode import IMAGE_EXTENSIONS, TEXT_EXTENSIONS, Sample, decode_sample

EXPECTED_COUNTS = {"digits_train": 1437, "digits_val": 360, "shapes_train": 6000, "shapes_val": 500,
                   "shapes_single_val": 480}

# A mention: article, optional size, optional colour, then a shape or the word "shape" (training captions
# sometimes leave the colour or the shape out; held-out captions always name size, colour and shape).
_OBJ = rf"(?:an?|the) (?:(small|large) )?(?:({'|'.join(COLOURS)}) )?({'|'.join(SHAPES)}|shape)\b"
_REL = "to the left of|left of|to the right of|right of|above|below"
_RELATED = re.compile(rf"{_OBJ} ({_REL}) {_OBJ}")
_MENTION = re.compile(_OBJ)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_demo_data(tmp_path_factory.mktemp("demo"), seed=0)


def _samples(folder: Path) -> list[Sample]:
    raws = list(read_shards(expand_shards(str(folder)), IMAGE_EXTENSIONS + TEXT_EXTENSIONS + ("json",)))
    assert not any(isinstance(raw, ShardFailure) for raw in raws)
    return [decode_sample(raw) for raw in raws]


@pytest.fixture(scope="module")
def decoded(demo: dict[str, Path]) -> dict[str, list[Sample]]:
    return {name: _samples(folder) for name, folder in demo.items()}


def test_counts_match_sizes_json_and_each_set_has_several_shards(demo: dict[str, Path],
                                                                  decoded: dict[str, list[Sample]]) -> None:
    assert set(demo) == set(EXPECTED_COUNTS)
    for name, expected in EXPECTED_COUNTS.items():
        shards = expand_shards(str(demo[name]))
        assert len(decoded[name]) == expected, name
        assert read_sizes(shards) == expected, name
        assert len(shards) >= 2, name


def test_digits_val_is_a_held_out_stratified_split(decoded: dict[str, list[Sample]]) -> None:
    train_keys = {s.key for s in decoded["digits_train"]}
    val_keys = {s.key for s in decoded["digits_val"]}
    assert not train_keys & val_keys
    assert len(train_keys | val_keys) == 1797  # every sklearn digit lands in exactly one split
    train_labels = Counter(s.meta["label"] for s in decoded["digits_train"])
    val_labels = Counter(s.meta["label"] for s in decoded["digits_val"])
    for label in range(10):
        assert 0.17 < val_labels[label] / (train_labels[label] + val_labels[label]) < 0.23


def test_digit_captions_name_their_label_and_no_other(decoded: dict[str, list[Sample]]) -> None:
    number_words = re.compile(rf"\b({'|'.join(DIGIT_WORDS)}|\d)\b")
    for name, n_captions in (("digits_train", 3), ("digits_val", 1)):
        for sample in decoded[name]:
            assert sample.meta["dataset"] == "digits"
            assert len(sample.captions) == n_captions and len(set(sample.captions)) == n_captions
            label = sample.meta["label"]
            for caption in sample.captions:
                named = set(number_words.findall(caption))
                assert named and named <= {DIGIT_WORDS[label], str(label)}, (caption, label)
            assert sample.image.size == (32, 32) and sample.image.mode == "RGB"
    # The varied templates really are varied.
    assert len({c for s in decoded["digits_train"] for c in s.captions}) > 100


def _matches(objects: list[dict], size: str, colour: str, shape: str) -> list[dict]:
    """The scene objects a (possibly partial) mention can refer to."""
    return [o for o in objects if (not size or o["size"] == size) and (not colour or o["colour"] == colour)
            and (shape == "shape" or o["shape"] == shape)]


def _relation_holds(a: dict, b: dict, rel: str) -> bool:
    dx, dy = a["x"] - b["x"], a["y"] - b["y"]
    if "left" in rel or "right" in rel:
        return abs(dx) >= abs(dy) and (dx < 0 if "left" in rel else dx > 0)
    return abs(dy) > abs(dx) and (dy < 0 if rel == "above" else dy > 0)


def _check_scene_caption(caption: str, objects: list[dict], canonical: bool) -> None:
    mentions = _MENTION.findall(caption)
    for match in _MENTION.finditer(caption):
        size, colour, shape = match.groups()
        size, colour = size or "", colour or ""
        assert _matches(objects, size, colour, shape), (caption, objects)  # nothing absent is named
        if canonical and not match.group(0).startswith("the "):  # a back-reference carries no size
            assert size and colour and shape != "shape", (caption, objects)
    # Every object is named once; a three-shape caption may refer back to one ("below the blue triangle").
    back_references = sum(m.group(0).startswith("the ") for m in _MENTION.finditer(caption))
    assert len(mentions) - back_references == len(objects), (caption, objects)
    if canonical:
        named = {(c, s) for _, c, s in mentions}
        assert named == {(o["colour"], o["shape"]) for o in objects}, (caption, objects)
    relations = _RELATED.findall(caption)
    # One relation between two shapes; with three, one or two (the third is sometimes placed too).
    assert len(relations) in {1: {0}, 2: {1}, 3: {1, 2}}[len(objects)], (caption, objects)
    for size_a, colour_a, shape_a, rel, size_b, colour_b, shape_b in relations:
        pairs = [(a, b) for a in _matches(objects, size_a, colour_a, shape_a)
                 for b in _matches(objects, size_b, colour_b, shape_b) if a is not b]
        assert any(_relation_holds(a, b, rel) for a, b in pairs), (caption, objects)


def test_shape_captions_are_true_of_the_scene(decoded: dict[str, list[Sample]]) -> None:
    rng = random.Random(0)
    for name in ("shapes_train", "shapes_val", "shapes_single_val"):
        for sample in rng.sample(decoded[name], 300):
            objects = sample.meta["objects"]
            assert sample.meta["dataset"] == "shapes" and sample.meta["n_objects"] == len(objects)
            for caption in sample.captions:
                _check_scene_caption(caption, objects, canonical=name != "shapes_train")
            # Each object is drawn where its metadata says, in its colour (the centre is inside every shape).
            for obj in objects:
                pixel = sample.image.getpixel((obj["x"], obj["y"]))
                assert isinstance(pixel, tuple)
                assert max(abs(p - q) for p, q in zip(pixel, COLOUR_RGB[obj["colour"]])) < 40, (sample.key, obj)
            assert sample.image.size == (64, 64)


def test_shape_sets_have_the_promised_mix(decoded: dict[str, list[Sample]]) -> None:
    train_sizes = Counter(s.meta["n_objects"] for s in decoded["shapes_train"])
    assert train_sizes == {1: 2000, 2: 2000, 3: 2000}
    assert all(len(s.captions) == 3 for s in decoded["shapes_train"])
    assert {s.meta["n_objects"] for s in decoded["shapes_val"]} == {2, 3}
    assert all(len(s.captions) == 1 for s in decoded["shapes_val"] + decoded["shapes_single_val"])
    single = decoded["shapes_single_val"]
    combos = Counter((s.meta["colour"], s.meta["shape"], s.meta["size"]) for s in single)
    assert len(combos) == len(COLOURS) * len(SHAPES) * 2 and set(combos.values()) == {10}
    for s in single:
        obj = s.meta["objects"][0]
        assert (s.meta["colour"], s.meta["shape"], s.meta["size"]) == (obj["colour"], obj["shape"], obj["size"])


def test_shape_val_scenes_are_held_out_from_train(decoded: dict[str, list[Sample]]) -> None:
    def layout(sample: Sample) -> tuple:
        return tuple(sorted(tuple(sorted(o.items())) for o in sample.meta["objects"]))

    train = {layout(s) for s in decoded["shapes_train"]}
    assert not train & {layout(s) for s in decoded["shapes_val"]}
    train_keys = {s.key for s in decoded["shapes_train"]}
    assert not train_keys & {s.key for s in decoded["shapes_val"] + decoded["shapes_single_val"]}


def test_relation_uses_the_larger_axis_difference() -> None:
    centre = ShapeObject("circle", "red", "small", 32, 32)
    assert relation(ShapeObject("square", "blue", "small", 10, 25), centre) == "left of"
    assert relation(ShapeObject("square", "blue", "small", 50, 40), centre) == "right of"
    assert relation(ShapeObject("square", "blue", "small", 25, 5), centre) == "above"
    assert relation(ShapeObject("square", "blue", "small", 40, 60), centre) == "below"


def test_scene_sampling_and_rendering_are_deterministic() -> None:
    first = sample_scene(random.Random(5), 3)
    assert first == sample_scene(random.Random(5), 3)
    assert render_scene(first).tobytes() == render_scene(sample_scene(random.Random(5), 3)).tobytes()


def test_second_call_is_a_no_op(demo: dict[str, Path]) -> None:
    root = demo["digits_train"].parent
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    start = time.perf_counter()
    assert generate_demo_data(root, seed=0) == demo
    assert time.perf_counter() - start < 1.0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before
    assert json.loads((root / ".demo_complete.json").read_text())["counts"] == EXPECTED_COUNTS
