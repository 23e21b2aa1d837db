"""Training data throughput per DataLoader worker: our WebDataset pipeline against open_clip_train's, side by side.

    python bench/data_throughput.py --images web resized512 --samples 1024 --per-shard 128 --batch-size 64 \
        --workers 1 --warmup 2 --batches 12 --rounds 3 --image-size 224

The pipelines read the same generated shards (or `--shards DIR`) with open_clip's ViT-B-32 train recipe
(RandomResizedCrop(S, scale=(0.9, 1.0)) bicubic, RGB, ToTensor, Normalize) and tokenizer:

- ours: `mmpretrain.data.loader.TrainLoader` (a torch DataLoader over our ReaderStream with the default
  image-text stages, built as `run.py` builds it) with our train transform as training uses it (`data/augment.py`:
  the same crop, with big JPEGs decoded at reduced scale, and uint8 images normalised on arrival in the training
  process, as training does on its device);
- ours_full_decode: the same with `reduced_jpeg_decode` off: the images that reach the model are identical to
  open_clip's transform's;
- open_clip: `open_clip_train.data.get_wds_dataset(..., is_train=True)` (a wds.WebLoader over a wds.DataPipeline)
  with `open_clip.image_transform(S, is_train=True)`.

Timed: from the arrival of the last warm-up batch to the arrival of the last of `--batches` batches in this
(training) process, i.e. everything a worker does for a batch in steady state: tar member reading, decode,
augment, tokenize, collate, and the transfer of the batch to the main process. Not timed: worker start-up, the
shuffle-buffer fill and the first `--warmup` batches, shard generation, any model work. Both shuffle buffers hold
(nearly) a whole epoch here, so tar reading happens mostly during warm-up (from the page cache either way).

Per-worker samples/s = timed samples / seconds / workers; samples per worker CPU-second = timed samples / the
workers' user + system CPU time over the same window (psutil), the figure less disturbed by other load. Rounds
alternate ours, ours_full_decode, open_clip, ours... because the machine is shared and timings drift; the table gives
each pipeline's medians over rounds and the ratios ours / open_clip (median, min and max of the per-round ratios).
`--json` writes the raw per-round rows.

open_clip_train targets webdataset <= 0.2.86; under our pinned 1.0.2 its tar reader needs the one-line fix from
webdataset#384 (`eof_value=None`), applied in this process by `patch_open_clip_for_webdataset`.
"""

from __future__ import annotations

import os

# One intra-op thread everywhere, set before torch is imported: a worker that spreads ToTensor/Normalize over
# several threads would measure more than one worker's worth of CPU, and the two pipelines must get the same
# budget. (torch's DataLoader workers also call torch.set_num_threads(1) themselves; this covers OpenMP/MKL.)
# Only when run as the benchmark: bench/curation_throughput.py imports synth_jpeg from here, and its Ray workers
# and subprocesses (which inherit this environment) must keep their own thread counts.
if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import open_clip_train.data  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmpretrain.data.augment import AugmentConfig, build_train_transform  # noqa: E402
from mmpretrain.data.config import DataConfig  # noqa: E402
from mmpretrain.data.loader import TrainLoader  # noqa: E402
from mmpretrain.data.shard_writer import ShardWriter  # noqa: E402
from mmpretrain.data.shards import expand_shards  # noqa: E402
from mmpretrain.data.stages import StageEnv  # noqa: E402

DISTRIBUTIONS = ("web", "resized256", "resized512")
PIPELINES = ("ours", "ours_full_decode", "open_clip")
CONTEXT_LENGTH = 77
WORDS = ("a the of on in with and at by near under over photo picture image view close up of red blue green "
         "yellow black white small large old new wooden metal glass dog cat bird horse car bus train bike boat "
         "house street city beach mountain river lake forest field garden kitchen table chair window door man "
         "woman child people group playing sitting standing walking running holding looking sunset night snow "
         "rain sky cloud flower tree grass food plate cup coffee pizza cake shirt dress hat logo sign text vintage "
         "modern design illustration vector art background texture pattern stock 4k hd free download").split()

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def image_shape(kind: str, rng: np.random.Generator) -> tuple[int, int, int | None]:
    """(content width, content height, square canvas side or None) of one image of distribution `kind`."""
    short = float(np.exp(rng.uniform(np.log(256), np.log(1200))))
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.8))))  # width / height
    w, h = (short * aspect, short) if aspect >= 1 else (short, short / aspect)
    if kind == "web":  # originals as found: no resizing
        return round(w), round(h), None
    side = 512 if kind == "resized512" else 256  # img2dataset: keep_ratio_largest 512 / border 256
    scale = side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale)), side if kind == "resized256" else None


def synth_jpeg(rng: np.random.Generator, noise: np.ndarray, w: int, h: int, canvas: int | None,
               shapes: tuple[int, int] = (3, 9), rectangles: bool = True) -> bytes:
    """A JPEG with photo-like size and decode cost: a smooth colour gradient, a few flat shapes (edges), and
    mild sensor-like noise (sigma 8, cropped from a shared field: drawing fresh noise per image is the slow part).
    Flat colours would compress to almost nothing and pure noise to far too much; this lands near 2 bits/pixel.

    `shapes`: the [low, high) range of the number of shapes. `rectangles=False` draws ellipses only and makes no
    draw for the kind of shape. bench/curation_throughput.py asks for (3, 8) and no rectangles: its images, drawn
    from the same seeds, stay byte for byte those it was measured on."""
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    base, dx, dy = (rng.uniform(lo, hi, 3).astype(np.float32) for lo, hi in ((0, 255), (-160, 160), (-160, 160)))
    image = Image.fromarray(np.clip(base + dx * x + dy * y, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(*shapes))):
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        box = [x0, y0, x0 + rng.uniform(0.05, 0.6) * w, y0 + rng.uniform(0.05, 0.6) * h]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if not rectangles or rng.random() < 0.6 else draw.rectangle)(box, fill=fill)
    oy, ox = int(rng.integers(0, noise.shape[0] - h + 1)), int(rng.integers(0, noise.shape[1] - w + 1))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise[oy:oy + h, ox:ox + w], 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if canvas is not None:  # img2dataset "border": the resized image centred on a black square
        square = Image.new("RGB", (canvas, canvas))
        square.paste(image, ((canvas - w) // 2, (canvas - h) // 2))
        image = square
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_shards(out_dir: Path, kind: str, samples: int, per_shard: int, seed: int) -> dict[str, float]:
    """Write `samples` seeded synthetic image-caption pairs of distribution `kind`; return size statistics."""
    rng = np.random.default_rng([seed, DISTRIBUTIONS.index(kind)])
    noise = np.random.default_rng(seed).normal(0, 8, (2200, 2200, 3)).astype(np.int16)  # >= 1200 * 1.8 px
    nbytes = pixels = 0
    with ShardWriter(out_dir, samples_per_shard=per_shard) as writer:
        for i in range(samples):
            w, h, canvas = image_shape(kind, rng)
            jpeg = synth_jpeg(rng, noise, w, h, canvas)
            caption = " ".join(rng.choice(WORDS, int(rng.integers(6, 26))))
            writer.write(f"{i:08d}", jpeg, "jpg", caption)
            nbytes, pixels = nbytes + len(jpeg), pixels + (canvas * canvas if canvas else w * h)
    return {"mean_kb": nbytes / samples / 1024, "mean_mpix": pixels / samples / 1e6,
            "bits_per_pixel": 8 * nbytes / pixels}


def ours(shards: list[str], transform: Callable, tokenizer: Callable, args: argparse.Namespace) -> TrainLoader:
    config = DataConfig(train=shards, batch_size=args.batch_size, num_workers=args.workers,
                        shuffle_buffer=args.shuffle_buffer)
    return TrainLoader(config, StageEnv(config, transform, tokenizer), seed=args.seed)


def patch_open_clip_for_webdataset() -> None:
    """Let open_clip_train read shards under the webdataset we pin (1.0.2; open_clip[training] asks <= 0.2.86).

    Since webdataset 0.2.96, tar_file_expander yields an empty dict after each shard (eof_value={}), which
    open_clip's group_by_keys_nothrow indexes as a file (KeyError: 'fname'; webdataset#384, open_clip#935).
    The fix given there, eof_value=None, restores the old stream exactly; it is bound into open_clip_train.data
    only (forked workers inherit it), so webdataset itself and our pipeline are untouched.
    """
    module = open_clip_train.data
    if not isinstance(module.tar_file_expander, functools.partial):
        module.tar_file_expander = functools.partial(module.tar_file_expander, eof_value=None)


def open_clip_wds(shards: list[str], transform: Callable, tokenizer: Callable, args: argparse.Namespace) -> Iterable:
    # The fields get_wds_dataset (and the wds stages it builds) read for training on one node. train_num_samples is
    # the true size: with_epoch then allows ceil(samples / batch / workers) batches per worker, never fewer than one
    # pass yields, and main() checks that we consume no more than one pass (beyond it wds would replay the shards).
    data_args = argparse.Namespace(
        train_data="::".join(shards), val_data=None, train_num_samples=args.total_samples, dataset_resampled=False,
        train_data_upsampling_factors=None, seed=args.seed, batch_size=args.batch_size, workers=args.workers,
        world_size=1)
    info = open_clip_train.data.get_wds_dataset(data_args, transform, is_train=True, epoch=0, tokenizer=tokenizer)
    return info.dataloader


def as_pairs(loader: Iterable, finish: Callable[[torch.Tensor], torch.Tensor]) -> Batches:
    """(images, texts) from either loader: ours yields dicts (its TrainLoader has taken the batch's position off).
    `finish` is what training does to the images on arrival: ours normalises its uint8 images there (on the GPU
    in training; here on the main process's CPU, inside the timed loop)."""
    for batch in loader:
        images, texts = (batch["image"], batch["text"]) if isinstance(batch, dict) else (batch[0], batch[1])
        yield finish(images), texts


def measure(build: Callable[[], Iterable], finish: Callable[[torch.Tensor], torch.Tensor], args: argparse.Namespace
            ) -> dict[str, float]:
    """One fresh loader: warm-up batches (shape-checked), then `args.batches` timed ones; workers shut down after."""
    # open_clip's DataLoader draws its workers' base seed from here: same run, same batches (ours seeds every
    # sample from --seed and draws no worker seed from the global generator)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    loader = build()
    batches = iter(loader)
    pairs = as_pairs(batches, finish)
    side = args.image_size
    for _ in range(args.warmup):  # both pipelines must hand the model the same thing
        images, texts = next(pairs)
        assert images.shape == (args.batch_size, 3, side, side), images.shape
        assert images.dtype == torch.float32, images.dtype
        assert texts.shape == (args.batch_size, CONTEXT_LENGTH), texts.shape
        assert texts.dtype == torch.int64, texts.dtype
    # The workers' CPU time over the same window: on a shared machine wall time also counts waiting for a core,
    # CPU time mostly does not, so samples per CPU-second is the steadier figure of the two.
    workers = psutil.Process().children()
    cpu_from, timed_from = worker_cpu_seconds(workers), time.perf_counter()
    for _ in range(args.batches):
        next(pairs)
    seconds, cpu = time.perf_counter() - timed_from, worker_cpu_seconds(workers) - cpu_from
    # Stop the workers now (not whenever the loader is collected) so none keeps prefetching into the next timing.
    if isinstance(loader, TrainLoader):
        loader.close()
    else:
        getattr(batches, "_shutdown_workers", lambda: None)()
    del pairs, batches, loader
    samples = args.batches * args.batch_size
    return {"warmup_s": timed_from - start, "seconds": seconds, "worker_cpu_s": cpu,
            "samples_per_s_per_worker": samples / seconds / args.workers, "samples_per_cpu_s": samples / cpu}


def worker_cpu_seconds(workers: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in workers)  # user + system


def markdown(rows: list[dict[str, Any]]) -> str:
    """Per distribution and pipeline: medians over rounds; ratios ours / open_clip per round (median, min, max)."""
    lines = ["| images | pipeline | samples/s per worker (median) | x open_clip (median) | min / max ratio "
             "| samples per worker CPU-s (median) | x open_clip (median) | min / max ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for images in dict.fromkeys(r["images"] for r in rows):
        cells = {p: "" for p in PIPELINES}
        for metric in ("samples_per_s_per_worker", "samples_per_cpu_s"):
            value = {p: [r[metric] for r in rows if r["images"] == images and r["pipeline"] == p] for p in PIPELINES}
            for pipeline in PIPELINES[:-1]:
                ratios = [a / b for a, b in zip(value[pipeline], value["open_clip"])]
                cells[pipeline] += (f" | {statistics.median(value[pipeline]):.1f} | {statistics.median(ratios):.2f} "
                                    f"| {min(ratios):.2f} / {max(ratios):.2f}")
            cells["open_clip"] += f" | {statistics.median(value['open_clip']):.1f} | 1.00 | "
        lines += [f"| {images} | {pipeline}{cells[pipeline]} |" for pipeline in PIPELINES]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="+", default=["web", "resized512"], choices=DISTRIBUTIONS,
                        help="web: originals (short side 256-1200 px); resizedN: img2dataset output at N px")
    parser.add_argument("--shards", type=Path, help="benchmark this folder of shards (with sizes.json) instead")
    parser.add_argument("--samples", type=int, default=1024, help="samples to generate per distribution")
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes per pipeline")
    parser.add_argument("--shuffle-buffer", type=int, default=1000,
                        help="ours; open_clip's is fixed (5000 samples, yields from 1000 on)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated shards (their folder is printed)")
    parser.add_argument("--json", type=Path, help="also write the raw per-round rows here")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be >= 1: per-worker throughput needs worker processes")

    patch_open_clip_for_webdataset()
    transform = open_clip.image_transform(args.image_size, is_train=True, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD)
    preprocess = {"size": args.image_size, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
                  "interpolation": "bicubic", "resize_mode": "shortest"}  # what open_clip gives ViT-B-32
    transforms = {"ours": build_train_transform(preprocess, AugmentConfig()),
                  "ours_full_decode": build_train_transform(preprocess, AugmentConfig(reduced_jpeg_decode=False)),
                  "open_clip": transform}
    finishers = {name: getattr(t, "device_normalizer", lambda: None)() or (lambda images: images)
                 for name, t in transforms.items()}
    builders = {"ours": ours, "ours_full_decode": ours, "open_clip": open_clip_wds}
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    root = Path(tempfile.mkdtemp(prefix="data_throughput-"))
    rows: list[dict[str, Any]] = []
    try:
        sets = {args.shards.name: args.shards} if args.shards else {kind: root / kind for kind in args.images}
        for images, folder in sets.items():
            started = time.perf_counter()
            if not args.shards:
                stats = write_shards(folder, images, args.samples, args.per_shard, args.seed)
                print(f"# {images}: {args.samples} samples, {stats['mean_mpix']:.2f} MP, {stats['mean_kb']:.0f} KB, "
                      f"{stats['bits_per_pixel']:.2f} bits/pixel per image on average; written in "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
            shards = expand_shards(str(folder))
            sizes = json.loads((folder / "sizes.json").read_text())
            counts = [int(sizes[Path(s).name]) for s in shards]
            args.total_samples = sum(counts)
            # Batches every worker can make from one pass over its shards (whatever the shard order): more and
            # open_clip's stream would replay shards, ours would start its next epoch.
            per_pass = min(counts) * (len(shards) // args.workers) // args.batch_size * args.workers
            if args.warmup + args.batches > per_pass:
                parser.error(f"{images}: --warmup + --batches = {args.warmup + args.batches} exceeds the {per_pass} "
                             f"batches one pass over {len(shards)} shards gives {args.workers} worker(s); "
                             "generate more --samples or time fewer --batches")
            for round_index in range(args.rounds):
                for pipeline in PIPELINES:
                    build = functools.partial(builders[pipeline], shards, transforms[pipeline], tokenizer, args)
                    result = measure(build, finishers[pipeline], args)
                    rows.append({"images": images, "pipeline": pipeline, "round": round_index, "workers": args.workers,
                                 "batch_size": args.batch_size, "batches": args.batches,
                                 "image_size": args.image_size, **result})
                    print(f"# {images} round {round_index} {pipeline}: "
                          f"{result['samples_per_s_per_worker']:.1f} samples/s per worker, "
                          f"{result['samples_per_cpu_s']:.1f} per worker CPU-s "
                          f"(warm-up {result['warmup_s']:.1f} s)", flush=True)
    finally:
        if args.keep:
            print(f"# shards kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
