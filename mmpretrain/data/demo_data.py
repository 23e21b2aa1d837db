"""Embedded demo data, generated locally in seconds with no download: handwritten digits and compositional shapes.

Two tiny tasks that a small CLIP trains on in minutes yet still say something:
- digits: scikit-learn's 1,797 8x8 handwritten digits with varied captions ("a handwritten seven", "the number 7");
  zero-shot classification over ten classes is the smoke test that training works at all.
- shapes: synthetic scenes of one to three coloured shapes with captions that name sizes, colours and spatial
  relations ("a large blue square left of a small green triangle"). Retrieval between scenes that differ only in
  which colour goes with which shape, or in word order, tests attribute binding — where CLIP-style models fail.

Every sample also carries sound, a ``.flac`` member synthesised in demo_audio.py: the DTMF telephone tones of the
digit, or one beep per shape whose pitch, timbre and length say its colour, shape and size. The sound comes from
its own random generator per sample, so the images and captions are exactly those written before there was sound.

Validation sets come from a different random stream than training, so they are held out. Everything is written
as shards through ShardWriter, exactly as real data would be, so the demo exercises the real pipeline.
"""

from __future__ import annotations

import io
import json
import math
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mmpretrain.data.demo_audio import digit_flac, scene_flac
from mmpretrain.data.shard_writer import ShardWriter

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SHAPES = ["circle", "square", "triangle", "diamond"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SIZES = ["small", "large"]

# Saturated and far apart in RGB, so colour is never the ambiguous part of a scene.
COLOUR_RGB = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220),
    "yellow": (240, 205, 20), "purple": (140, 40, 180), "orange": (245, 130, 20),
}
SIZE_RADIUS = {"small": 8, "large": 14}  # at 64 px; a large shape covers about three times a small one's area

SHAPES_IMAGE_SIZE = 64
DIGITS_IMAGE_SIZE = 32
SAMPLES_PER_SHARD = 500
VAL_SAMPLES_PER_SHARD = 200  # held-out sets are small; several shards still exercise shard splitting
CAPTIONS_PER_TRAIN_SAMPLE = 3
N_SHAPES_TRAIN = 6000
N_SHAPES_VAL = 500
SINGLE_VAL_REPEATS = 10  # per colour x shape x size combination: 6 * 4 * 2 * 10 = 480 scenes

_MARKER = ".demo_complete.json"
_FORMAT_VERSION = 4  # bump when the generated data changes, so stale demo folders are rewritten (3: sound, 4: 8-bit)
_BACKGROUND = (215, 215, 215)
_SUPERSAMPLE = 4  # draw at 4x and downsample: PIL's polygons have no anti-aliasing of their own

DIGIT_TEMPLATES = [
    "{a_word} written by hand", "a handwritten {word}", "the number {num}", "a photo of the digit {word}",
    "an image of a handwritten {num}", "the digit {word} written by hand", "a scanned {word}",
    "the numeral {num}", "a handwritten digit {num}", "a blurry picture of the number {word}",
    "a white {word} on a black background", "{a_num} drawn by hand",
]

_PREFIXES = ["", "a picture of ", "there is ", "an image of ", "a photo of "]
# The first phrasing of each relation is the canonical one, used for held-out captions.
RELATION_PHRASES = {
    "left of": ["left of", "to the left of"], "right of": ["right of", "to the right of"],
    "above": ["above"], "below": ["below"],
}


@dataclass
class ShapeObject:
    """One shape in a scene; (x, y) is its centre in pixels of the 64x64 image, y growing downwards."""

    shape: str
    colour: str
    size: str
    x: int
    y: int


def generate_demo_data(root: str | Path, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Write the demo shard sets under `root` (skipped when already complete for this seed) and return their folders.

    Keys: digits_train, digits_val, shapes_train, shapes_val, shapes_single_val.
    """
    root = Path(root)
    paths = {name: root / name for name in
             ("digits_train", "digits_val", "shapes_train", "shapes_val", "shapes_single_val")}
    marker = root / _MARKER
    if not force and marker.exists():
        done = json.loads(marker.read_text())
        if done.get("version") == _FORMAT_VERSION and done.get("seed") == seed:
            return paths
    marker.unlink(missing_ok=True)
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)

    counts = {}
    counts.update(_write_digits(paths["digits_train"], paths["digits_val"], seed))
    train_rng = random.Random(f"shapes-train-{seed}")
    counts["shapes_train"] = _write_scenes(paths["shapes_train"], "train", train_rng, train_scene_sizes(),
                                           CAPTIONS_PER_TRAIN_SAMPLE, seed)
    # Held out: a separate random stream, never consumed by training generation.
    val_rng = random.Random(f"shapes-val-{seed}")
    counts["shapes_val"] = _write_scenes(paths["shapes_val"], "val", val_rng,
                                         [2 + i % 2 for i in range(N_SHAPES_VAL)], 1, seed)
    counts["shapes_single_val"] = _write_single_val(paths["shapes_single_val"],
                                                    random.Random(f"shapes-single-val-{seed}"), seed)
    # The marker goes last: an interrupted run leaves none, so the next call regenerates everything.
    marker.write_text(json.dumps({"version": _FORMAT_VERSION, "seed": seed, "counts": counts}, indent=1))
    return paths


def train_scene_sizes() -> list[int]:
    """Objects per training scene: 1, 2, 3 in turn, so a third of the scenes are single shapes."""
    return [1 + i % 3 for i in range(N_SHAPES_TRAIN)]


# ---------------------------------------------------------------------------------------------- digits


def digit_caption(label: int, template: str) -> str:
    """Fill a digit template; "an eight" / "an 8" need the other article."""
    word, num = DIGIT_WORDS[label], str(label)
    return template.format(word=word, num=num, a_word=f"{'an' if label == 8 else 'a'} {word}",
                           a_num=f"{'an' if label == 8 else 'a'} {num}")


def _digit_png(pixels: np.ndarray) -> bytes:
    # load_digits holds ink intensity 0..16: white digits on black, bilinear upscaling keeps strokes smooth.
    grey = Image.fromarray((pixels * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
    image = grey.resize((DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE), Image.Resampling.BILINEAR).convert("RGB")
    return _png_bytes(image)


def _write_digits(train_dir: Path, val_dir: Path, seed: int) -> dict[str, int]:
    from sklearn.datasets import load_digits  # only the demo needs scikit-learn
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    labels = digits.target.astype(int)
    # Stratified so every class keeps its share in the 20% held-out split.
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels,
                                          random_state=seed)
    rng = random.Random(f"digits-captions-{seed}")
    counts = {}
    for name, folder, indices, n_captions in (("digits_train", train_dir, train_idx, CAPTIONS_PER_TRAIN_SAMPLE),
                                              ("digits_val", val_dir, val_idx, 1)):
        per_shard = SAMPLES_PER_SHARD if n_captions > 1 else VAL_SAMPLES_PER_SHARD
        with ShardWriter(folder, per_shard, prefix="digits") as writer:
            for index in indices:
                label = int(labels[index])
                captions = [digit_caption(label, t) for t in rng.sample(DIGIT_TEMPLATES, n_captions)]
                # The key carries the original dataset index: unique, and disjoint between train and val.
                key = f"digit{int(index):04d}"
                writer.write(key, _digit_png(digits.images[index]), "png", captions,
                             {"label": label, "dataset": "digits"}, extra={"flac": digit_flac(label, seed, key)})
        counts[name] = writer.total
    return counts


# ---------------------------------------------------------------------------------------------- shapes


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where `a` is relative to `b`, along the axis where their centres differ most (true by construction)."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _bound(obj_size: str) -> float:
    # Radius of a circle around any of the shapes (the square's corners reach 1.06 r).
    return SIZE_RADIUS[obj_size] * 1.07


def sample_scene(rng: random.Random, n_objects: int, attributes: list[tuple[str, str, str]] | None = None
                 ) -> list[ShapeObject]:
    """Place `n_objects` non-overlapping shapes; each scene's (colour, shape) pairs are distinct so captions
    name every object unambiguously. `attributes` fixes (shape, colour, size) per object."""
    while True:
        if attributes is None:
            kinds = rng.sample([(s, c) for s in SHAPES for c in COLOURS], n_objects)
            attrs = [(s, c, rng.choice(SIZES)) for s, c in kinds]
            if n_objects >= 3 and all(size == "large" for _, _, size in attrs):
                continue  # three large shapes never fit side by side in 64 px
        else:
            attrs = attributes
        # Restart from an empty canvas when early shapes leave no room for a later one.
        for _ in range(20):
            placed = _place(rng, attrs)
            if placed is not None:
                return placed


_GRID_Y, _GRID_X = np.mgrid[0:SHAPES_IMAGE_SIZE, 0:SHAPES_IMAGE_SIZE]


def _place(rng: random.Random, attrs: list[tuple[str, str, str]]) -> list[ShapeObject] | None:
    """Put each shape at a uniformly random centre among those that keep it inside the image and clear of the
    shapes already placed (an exact mask rather than rejection sampling, so crowded scenes cost no more)."""
    placed: list[ShapeObject] = []
    for shape, colour, size in attrs:
        margin = math.ceil(_bound(size)) + 1
        free = ((_GRID_X >= margin) & (_GRID_X < SHAPES_IMAGE_SIZE - margin)
                & (_GRID_Y >= margin) & (_GRID_Y < SHAPES_IMAGE_SIZE - margin))
        for o in placed:
            free &= np.hypot(_GRID_X - o.x, _GRID_Y - o.y) >= _bound(size) + _bound(o.size) + 2
        candidates = np.flatnonzero(free)
        if len(candidates) == 0:
            return None
        y, x = divmod(int(candidates[rng.randrange(len(candidates))]), SHAPES_IMAGE_SIZE)
        placed.append(ShapeObject(shape, colour, size, x, y))
    return placed


def render_scene(objects: list[ShapeObject]) -> Image.Image:
    """Draw the shapes on a light grey 64x64 RGB canvas."""
    s = _SUPERSAMPLE
    image = Image.new("RGB", (SHAPES_IMAGE_SIZE * s, SHAPES_IMAGE_SIZE * s), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x, y, r, fill = obj.x * s + s / 2, obj.y * s + s / 2, SIZE_RADIUS[obj.size] * s, COLOUR_RGB[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif obj.shape == "square":
            h = 0.75 * r  # area close to the circle's
            draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
        elif obj.shape == "triangle":  # pointing up, centred on its circumcircle
            draw.polygon([(x + r * math.cos(a), y + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6,
                                                                                5 * math.pi / 6)], fill=fill)
        else:  # diamond: narrower than tall, so it is not just a rotated square
            draw.polygon([(x, y - r), (x + 0.75 * r, y), (x, y + r), (x - 0.75 * r, y)], fill=fill)
    return image.resize((SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE), Image.Resampling.BOX)


def _noun_phrase(obj: ShapeObject, with_size: bool, article: str = "a", with_colour: bool = True,
                 with_shape: bool = True) -> str:
    words = ([obj.size] if with_size else []) + ([obj.colour] if with_colour else [])
    words.append(obj.shape if with_shape else "shape")
    if article == "a" and words[0][0] in "aeiou":
        article = "an"  # "an orange square"
    return " ".join([article] + words)


def scene_caption(objects: list[ShapeObject], rng: random.Random, canonical: bool) -> str:
    """One true caption of a scene. Canonical captions (held-out sets) always name sizes and use the first
    phrasing of each relation; training captions vary phrasing and sometimes leave out the size, the colour or
    the shape (saying "shape"), as real captions name only some attributes. Without that, colour alone tells
    most captions in a batch apart and the towers never need to learn shape (the bag-of-words shortcut)."""
    def phrase(obj: ShapeObject, article: str = "a") -> str:
        if canonical:
            return _noun_phrase(obj, True, article)
        dropped = rng.choices(["nothing", "colour", "shape"], weights=[0.6, 0.25, 0.15])[0]
        return _noun_phrase(obj, rng.random() < 0.75, article, with_colour=dropped != "colour",
                            with_shape=dropped != "shape")

    def rel(a: ShapeObject, b: ShapeObject) -> str:
        options = RELATION_PHRASES[relation(a, b)]
        return options[0] if canonical else rng.choice(options)

    order = rng.sample(objects, len(objects))  # which object is named first is part of what the text says
    if len(order) == 1:
        body = phrase(order[0])
    elif len(order) == 2:
        body = f"{phrase(order[0])} {rel(order[0], order[1])} {phrase(order[1])}"
    else:
        a, b, c = order
        body = f"{phrase(a)} {rel(a, b)} {phrase(b)}, and "
        body += phrase(c) if rng.random() < 0.5 else f"{phrase(c)} {rel(c, b)} {_noun_phrase(b, False, 'the')}"
    return rng.choice(_PREFIXES) + body


def _scene_meta(objects: list[ShapeObject]) -> dict[str, Any]:
    meta: dict[str, Any] = {"dataset": "shapes", "objects": [asdict(o) for o in objects],
                            "n_objects": len(objects)}
    if len(objects) == 1:  # string labels for zero-shot classification (label_key) on single shapes
        meta.update(colour=objects[0].colour, shape=objects[0].shape, size=objects[0].size)
    return meta


def _distinct_captions(objects: list[ShapeObject], rng: random.Random, n: int, canonical: bool) -> list[str]:
    captions: list[str] = []
    for _ in range(20 * n):  # a single shape has few phrasings; stop trying rather than loop forever
        caption = scene_caption(objects, rng, canonical)
        if caption not in captions:
            captions.append(caption)
            if len(captions) == n:
                break
    return captions


def _write_scenes(folder: Path, split: str, rng: random.Random, scene_sizes: list[int], n_captions: int,
                  seed: int) -> int:
    per_shard = SAMPLES_PER_SHARD if split == "train" else VAL_SAMPLES_PER_SHARD
    with ShardWriter(folder, per_shard, prefix="shapes") as writer:
        for i, n_objects in enumerate(scene_sizes):
            objects = sample_scene(rng, n_objects)
            captions = _distinct_captions(objects, rng, n_captions, canonical=n_captions == 1)
            key = f"{split}{i:06d}"
            writer.write(key, _png_bytes(render_scene(objects)), "png", captions, _scene_meta(objects),
                         extra={"flac": scene_flac(objects, seed, key)})
    return writer.total


def _write_single_val(folder: Path, rng: random.Random, seed: int) -> int:
    """Single shapes, balanced: every colour x shape x size combination the same number of times."""
    combos = [(s, c, z) for s in SHAPES for c in COLOURS for z in SIZES] * SINGLE_VAL_REPEATS
    rng.shuffle(combos)
    with ShardWriter(folder, VAL_SAMPLES_PER_SHARD, prefix="shapes") as writer:
        for i, attrs in enumerate(combos):
            objects = sample_scene(rng, 1, [attrs])
            key = f"single{i:06d}"
            writer.write(key, _png_bytes(render_scene(objects)), "png", scene_caption(objects, rng, canonical=True),
                         _scene_meta(objects), extra={"flac": scene_flac(objects, seed, key)})
    return writer.total


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
