"""CLIP_benchmark as the reference for `mmpretrain benchmark`: its dataset layout, written by its own writer, and
its own eval, run in-process on a tiny open_clip model.

- `write_classification_set` / `write_retrieval_set` write generated datasets with
  `clip_benchmark.webdataset_builder.convert_dataset` / `convert_retrieval_dataset` (so the layout on disk is
  theirs: `<root>/test/{0..n}.tar`, `test/nshards.txt`, `classnames.txt`, `zeroshot_classification_templates.txt`,
  `dataset_type.txt`). Images are coloured shapes on a textured background; a class is "<colour> <shape>".
- `make_tiny_model` saves a seeded random-init open_clip model (one of configs/models/*.json) as a state dict that
  `open_clip.create_model_and_transforms(name, pretrained=path)` loads.
- `run_clip_benchmark` runs clip_benchmark's CLI (`clip_benchmark.cli.main_eval` on a namespace from its own
  parser) in this process, fp32 (`--no_amp`), and returns each result file's JSON.

The benchmark script (bench/benchmark_speed.py) imports the writers from here too.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import sys
import types
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[2]
MODEL_CONFIGS = REPO / "configs" / "models"

COLOURS = {
    "red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (235, 215, 40),
    "purple": (140, 50, 170), "orange": (240, 140, 30), "cyan": (40, 200, 210), "pink": (240, 130, 190),
    "brown": (120, 75, 35), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon", "bar", "arrow")
TEMPLATES = ("a photo of a {c}.", "a drawing of a {c}.", "a {c} on a background.", "a picture of the {c}.")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "centre")


# ---------------------------------------------------------------------------------------------------------- images

def classnames(n_classes: int) -> list[str]:
    """"<colour> <shape>" for the first `n_classes` pairs, colour varying fastest (10 colours x 10 shapes)."""
    pairs = [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS]
    if not 1 <= n_classes <= len(pairs):
        raise ValueError(f"n_classes must be in 1..{len(pairs)}, got {n_classes}")
    return pairs[:n_classes]


def _background(rng: np.random.Generator, width: int, height: int, detail: bool) -> Image.Image:
    """A smooth two-colour gradient; with `detail`, blurred and fine noise on top (photo-like bytes per pixel)."""
    a, b = rng.integers(60, 200, size=(2, 3))
    t = np.linspace(0.0, 1.0, width)[None, :, None] * rng.uniform(0.3, 1.0) + \
        np.linspace(0.0, 1.0, height)[:, None, None] * rng.uniform(0.0, 0.7)
    t = t / t.max()
    pixels = a * (1 - t) + b * t
    if detail:
        coarse = rng.normal(0, 25, size=(max(1, height // 16), max(1, width // 16), 3))
        coarse = np.asarray(Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
            (width, height), Image.BICUBIC), dtype=np.float64) - 128
        pixels = pixels + coarse + rng.normal(0, 8, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: Sequence[float], phase: float) -> list[tuple[float, float]]:
        return [(cx + radius[i % len(radius)] * np.cos(phase + 2 * np.pi * i / n),
                 cy + radius[i % len(radius)] * np.sin(phase + 2 * np.pi * i / n)) for i in range(n)]
    if shape == "triangle":
        return ring(3, [r], -np.pi / 2)
    if shape == "diamond":
        return ring(4, [r], 0.0)
    if shape == "hexagon":
        return ring(6, [r], 0.0)
    if shape == "star":
        return ring(10, [r, r * 0.45], -np.pi / 2)
    if shape == "arrow":
        w = r * 0.35
        return [(cx - r, cy - w), (cx + 0.2 * r, cy - w), (cx + 0.2 * r, cy - 2 * w), (cx + r, cy),
                (cx + 0.2 * r, cy + 2 * w), (cx + 0.2 * r, cy + w), (cx - r, cy + w)]
    raise ValueError(shape)


def draw_shape(image: Image.Image, colour: str, shape: str, cx: float, cy: float, r: float) -> None:
    draw = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle((cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r * 0.3)))
    elif shape == "cross":
        w = r * 0.3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif shape == "bar":
        draw.rectangle((cx - r, cy - 0.3 * r, cx + r, cy + 0.3 * r), fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)


def shape_image(seed: int, classname: str, size: tuple[int, int], detail: bool = False,
                position: Optional[int] = None) -> Image.Image:
    """One "<colour> <shape>" on a background, at a seeded place and size (`position`: an index of POSITIONS)."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = _background(rng, width, height, detail)
    colour, shape = classname.split(" ", 1)
    side = min(width, height)
    r = side * rng.uniform(0.22, 0.34)
    if position is None:
        cx, cy = width / 2 + rng.uniform(-0.15, 0.15) * width, height / 2 + rng.uniform(-0.15, 0.15) * height
    else:
        fx, fy = [(0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7), (0.5, 0.5)][position]
        cx, cy = fx * width, fy * height
        r = r * 0.75
    draw_shape(image, colour, shape, cx, cy, r)
    if detail:
        image = image.filter(ImageFilter.GaussianBlur(0.6))
    return image


def encode_image(image: Image.Image, image_format: str) -> bytes:
    """As clip_benchmark's writer encodes (webdataset_builder.PIL_to_bytes): lossless webp, png or jpeg."""
    from clip_benchmark.webdataset_builder import PIL_to_bytes
    return PIL_to_bytes(image_format)(image)


# -------------------------------------------------------------------------------------------------------- datasets

def _size_for(index: int, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    return tuple(sizes[index % len(sizes)])


class ShapeClassification(torch.utils.data.Dataset):
    """(encoded image bytes, class index), `per_class` images of each class, classes interleaved. `classes` and
    `templates` are what clip_benchmark's writer saves as classnames.txt / zeroshot_classification_templates.txt.
    Images are encoded here (in the writer's DataLoader workers), the writer's "raw binary data" mode."""

    def __init__(self, n_classes: int, per_class: int, sizes: Sequence[tuple[int, int]], seed: int = 0,
                 image_format: str = "webp", detail: bool = False, templates: Sequence[str] = TEMPLATES) -> None:
        self.classes = classnames(n_classes)
        self.templates = list(templates)
        self.per_class, self.sizes, self.seed = per_class, list(sizes), seed
        self.image_format, self.detail = image_format, detail

    def __len__(self) -> int:
        return len(self.classes) * self.per_class

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        label = index % len(self.classes)
        image = shape_image(self.seed * 1_000_003 + index, self.classes[label], _size_for(index, self.sizes),
                            self.detail)
        return encode_image(image, self.image_format), label


def retrieval_captions(index: int, classname: str, position: int, n: int) -> list[str]:
    """`n` captions of image `index`, each unique in the set (the trailing number): identical captions of two
    images would tie exactly in text retrieval, where tie-breaking is an implementation detail."""
    where = POSITIONS[position]
    forms = [f"a {classname} in the {where}", f"a picture of a {classname}, number {index}",
             f"the {where} holds a {classname.split()[0]} shape", f"one {classname.split()[1]} coloured "
             f"{classname.split()[0]}", f"a {classname} drawn on a plain background"]
    return [f"{forms[j % len(forms)]} ({index}.{j})" for j in range(n)]


class ShapeRetrieval(torch.utils.data.Dataset):
    """(encoded image bytes, [caption, ...]): a "<colour> <shape>" at one of five positions."""

    def __init__(self, n_images: int, captions_per_image: int, sizes: Sequence[tuple[int, int]], seed: int = 0,
                 image_format: str = "webp", detail: bool = False, n_classes: int = 100) -> None:
        self.names = classnames(n_classes)
        self.n_images, self.captions_per_image, self.sizes, self.seed = n_images, captions_per_image, list(sizes), seed
        self.image_format, self.detail = image_format, detail

    def __len__(self) -> int:
        return self.n_images

    def item(self, index: int) -> tuple[str, int]:
        rng = np.random.default_rng([self.seed, index])
        return self.names[int(rng.integers(len(self.names)))], int(rng.integers(len(POSITIONS)))

    def captions(self, index: int) -> list[str]:
        classname, position = self.item(index)
        return retrieval_captions(index, classname, position, self.captions_per_image)

    def __getitem__(self, index: int) -> tuple[bytes, list[str]]:
        classname, position = self.item(index)
        image = shape_image(self.seed * 1_000_003 + index, classname, _size_for(index, self.sizes), self.detail,
                            position=position)
        return encode_image(image, self.image_format), self.captions(index)


@contextlib.contextmanager
def _quiet_writer() -> Iterator[None]:
    """clip_benchmark's writer prints, draws a progress bar and starts 8 DataLoader workers (torch warns on a
    smaller machine): keep that out of test logs."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        yield


def write_classification_set(root: Union[str, Path], n_classes: int = 10, per_class: int = 8,
                             sizes: Sequence[tuple[int, int]] = ((96, 72), (72, 96), (80, 80), (120, 90)),
                             seed: int = 0, image_format: str = "webp", detail: bool = False,
                             max_count: int = 10_000, verbose: bool = False,
                             templates: Sequence[str] = TEMPLATES) -> Path:
    """A zero-shot classification set in CLIP_benchmark's layout at `root`, written by its own
    `convert_dataset` (split "test"; `max_count` images per shard)."""
    from clip_benchmark.webdataset_builder import convert_dataset
    root = Path(root)
    dataset = ShapeClassification(n_classes, per_class, sizes, seed, image_format, detail, templates)
    with contextlib.nullcontext() if verbose else _quiet_writer():
        convert_dataset(dataset, "test", str(root), transform=None, image_format=image_format, max_count=max_count,
                        verbose=verbose)
    return root


def write_retrieval_set(root: Union[str, Path], n_images: int = 40, captions_per_image: int = 3,
                        sizes: Sequence[tuple[int, int]] = ((96, 72), (72, 96), (80, 80), (120, 90)),
                        seed: int = 0, image_format: str = "webp", detail: bool = False,
                        max_count: int = 10_000, verbose: bool = False) -> Path:
    """A retrieval set in CLIP_benchmark's layout at `root` (dataset_type.txt "retrieval", a "txt" of
    newline-separated captions per image), written by its own `convert_retrieval_dataset`."""
    from clip_benchmark.webdataset_builder import convert_retrieval_dataset
    root = Path(root)
    dataset = ShapeRetrieval(n_images, captions_per_image, sizes, seed, image_format, detail)
    all_captions = [c for i in range(n_images) for c in dataset.captions(i)]
    assert len(set(all_captions)) == len(all_captions), "captions must be unique (exact ties otherwise)"
    with contextlib.nullcontext() if verbose else _quiet_writer():
        convert_retrieval_dataset(dataset, "test", str(root), transform=None, image_format=image_format,
                                  max_count=max_count, verbose=verbose)
    return root


# ----------------------------------------------------------------------------------------------------------- model

def register_model_configs() -> None:
    """Make configs/models/*.json known to open_clip's factory (as mmpretrain.models.towers does), once."""
    if "mmp-tiny-vit" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIGS)


def make_tiny_model(path: Union[str, Path], name: str = "mmp-tiny-vit", seed: int = 0, fit_images: int = 600) -> Path:
    """A seeded random-init open_clip `name` saved as a plain state dict: `--pretrained path` for clip_benchmark,
    `name:path` for mmpretrain.

    A random ViT maps every image to almost the same feature, so it predicts one class for all images (acc1 =
    chance, every metric degenerate: an ordering bug would go unseen). With `fit_images` > 0 the image projection
    (`visual.proj`, ViTs only) is instead fitted in closed form (ridge least squares, a few seconds on CPU) to map
    `fit_images` generated shapes onto their class's text feature (the mean over TEMPLATES): everything else stays
    random, and the tiny model then tells most colours apart (10 classes: acc1 ~0.6)."""
    register_model_configs()
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    proj = getattr(model.visual, "proj", None)
    if fit_images and isinstance(proj, torch.nn.Parameter):
        model.eval()
        tokenizer = open_clip.get_tokenizer(name)
        names = classnames(100)
        sizes = ((96, 72), (72, 96), (80, 80), (120, 90))
        labels = [i % len(names) for i in range(fit_images)]
        with torch.no_grad():
            images = torch.stack([preprocess(shape_image(
                10**6 + seed * 10**5 + i, names[label], sizes[i % 4], position=i % 6 if i % 6 < 5 else None))
                for i, label in enumerate(labels)])
            weight = proj.data.clone()
            proj.data = torch.eye(weight.shape[0], dtype=weight.dtype)  # the pooled features, unprojected
            pooled = model.encode_image(images)
            text = torch.stack([F.normalize(model.encode_text(tokenizer([t.format(c=c) for t in TEMPLATES])),
                                            dim=-1).mean(0) for c in names])
            target = F.normalize(text, dim=-1)[labels]
            gram = pooled.T @ pooled + 1e-2 * torch.eye(pooled.shape[1])
            proj.data = torch.linalg.solve(gram, pooled.T @ target)[:, :weight.shape[1]].contiguous()
    path = Path(path)
    torch.save(model.state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------------- clip_benchmark

@contextlib.contextmanager
def numpy2_accuracy_fix() -> Iterator[None]:
    """clip_benchmark 1.6.2's `zeroshot_classification.accuracy` ends with `float(<1-element array>)`, which numpy
    >= 2 refuses ("only 0-dimensional arrays can be converted to Python scalars"). For the duration, swap in the
    same function (its own code object) whose globals see a `float` that reshapes the array to 0-d first: the
    values are the ones it computes under numpy 1. Nothing else of clip_benchmark is touched."""
    from clip_benchmark.metrics import zeroshot_classification as cb_zeroshot
    original = cb_zeroshot.accuracy

    def scalar_float(x):
        return builtins.float(np.asarray(x).reshape(()))

    patched = types.FunctionType(original.__code__, {**original.__globals__, "float": scalar_float},
                                 original.__name__, original.__defaults__, original.__closure__)
    cb_zeroshot.accuracy = patched
    try:
        yield
    finally:
        cb_zeroshot.accuracy = original


def clip_benchmark_args(datasets: Sequence[str], dataset_root: str, models: Sequence[str],
                        pretrained: Sequence[str], output: str, batch_size: int = 64, num_workers: int = 0,
                        task: str = "auto", recall_k: Sequence[int] = (1, 5, 10), amp: bool = False,
                        quiet: bool = True, extra: Sequence[str] = ()) -> list[str]:
    """The `clip_benchmark eval` command line (without the program name). `datasets` are names under
    `dataset_root`, which may be a template with `{dataset}` (clip_benchmark formats it per dataset); models and
    pretrained files are crossed (product) as clip_benchmark does."""
    argv = ["eval", "--dataset", *[f"wds/{d}" for d in datasets], "--dataset_root", dataset_root,
            "--model", *models, "--pretrained", *pretrained, "--task", task, "--output", output,
            "--batch_size", str(batch_size), "--num_workers", str(num_workers),
            "--recall_k", *[str(k) for k in recall_k]]
    if not amp:
        argv.append("--no_amp")
    if quiet:
        argv.append("--quiet")
    return argv + list(extra)


def parse_clip_benchmark_args(argv: Sequence[str]):
    """clip_benchmark's own parser (cli.get_parser_args reads sys.argv; give it `argv` for the call)."""
    from clip_benchmark import cli
    saved = sys.argv
    sys.argv = ["clip_benchmark", *argv]
    try:
        _, args = cli.get_parser_args()
    finally:
        sys.argv = saved
    return args


def run_clip_benchmark_argv(argv: Sequence[str]) -> None:
    """clip_benchmark's `eval` in this process (with the numpy-2 accuracy fix and our model configs)."""
    from clip_benchmark import cli
    register_model_configs()
    args = parse_clip_benchmark_args(argv)
    with numpy2_accuracy_fix():
        cli.main_eval(args)


def run_clip_benchmark(dataset_dir: Union[str, Path], model: str, pretrained: Union[str, Path],
                       output_dir: Union[str, Path], batch_size: int = 16, num_workers: int = 0,
                       task: str = "auto", recall_k: Sequence[int] = (1, 5, 10)) -> dict:
    """clip_benchmark's eval of one model on one CLIP_benchmark-layout dataset; its result JSON (`metrics` holds
    acc1/acc5/mean_per_class_recall or image/text_retrieval_recall@k).

    `task="auto"` lets clip_benchmark infer the task from the dataset's name, which for retrieval works only for
    the names it knows (flickr30k, mscoco_captions, ...); for other names give the task."""
    dataset_dir, output_dir = Path(dataset_dir).resolve(), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / f"{dataset_dir.name}__{model}__{Path(pretrained).name}.json"
    argv = clip_benchmark_args([dataset_dir.name], str(dataset_dir.parent / "{dataset}"), [model],
                               [str(pretrained)], str(output), batch_size=batch_size, num_workers=num_workers,
                               task=task, recall_k=recall_k)
    run_clip_benchmark_argv(argv)
    return json.loads(output.read_text())


def task_of(dataset_dir: Union[str, Path]) -> str:
    """The clip_benchmark task of a CLIP_benchmark-layout dataset, from its dataset_type.txt."""
    type_file = Path(dataset_dir) / "dataset_type.txt"
    kind = type_file.read_text().strip().lower() if type_file.exists() else "classification"
    return "zeroshot_retrieval" if kind == "retrieval" else "zeroshot_classification"


# ------------------------------------------------------------------------------------------------- test inputs

CLASSIFICATION = "shapes10"   # the generated sets' names (directories under the inputs' root)
RETRIEVAL = "captions"
MODEL = "mmp-tiny-vit"


def write_reference_inputs(root: Union[str, Path]) -> dict[str, Path]:
    """The small inputs the reference and parity tests share: a 10-class set (6 images a class), a retrieval set
    (36 images, 3 captions each), in 2 shards each (max_count) so shard order matters, and the tiny model."""
    root = Path(root)
    return {
        CLASSIFICATION: write_classification_set(root / CLASSIFICATION, n_classes=10, per_class=6, max_count=32),
        RETRIEVAL: write_retrieval_set(root / RETRIEVAL, n_images=36, captions_per_image=3, max_count=20),
        "model": make_tiny_model(root / "tiny-vit.pt", MODEL, seed=0),
    }
