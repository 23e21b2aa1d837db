"""The analyse phase: every input sample read once, checked, decoded and embedded, on Ray Data.

    from_items(shards) -> map_batches(read_and_prepare)        CPU tasks: safe tar reading, header checks, the
                                                               model's eval transform (decode + resize + normalise)
                       -> map_batches(Embedder, ActorPool)     actors holding the model (GPU when asked)
                       -> write_parquet(wave folder)           workers write; nothing passes through the driver

The result is the features table (curate/table.py). Samples the reader cannot use (no image, unreadable,
no caption, a member over the size cap) get a `read_reason` and are not embedded; per-sample filters placed before
the embed stage in the config (the basic filters) are applied here too, so a dropped sample is never decoded.
A shard that breaks partway leaves a small JSON in the failures folder naming it and the samples it lost.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa

from mmpretrain.curate.stages import Embed, Stage
from mmpretrain.curate.table import EMBEDDING, embedding_array
from mmpretrain.data.decode import IMAGE_EXTENSIONS, decode_captions, first_member, load_rgb, open_image
from mmpretrain.data.safe_tar import EVERY_MEMBER, ShardFailure, read_shard
from mmpretrain.data.shards import read_shard_sizes
from mmpretrain.data.skips import SampleLimits, SampleSkipped

# Every member is read (under the size cap): a sample with any oversized member is dropped here, so the write
# phase, which copies every member, never meets one.
MEMBERS = EVERY_MEMBER


@dataclass(frozen=True)
class Fault:
    """Test hook (MMP_CURATE_FAULT=kill_embedder:<marker file>): the first embed actor to reach its second batch
    while the marker file is absent creates it and SIGKILLs its own process, a worker dying mid-run."""

    kill_embedder_marker: Optional[str] = None

    @staticmethod
    def from_env() -> "Fault":
        spec = os.environ.get("MMP_CURATE_FAULT", "")
        kind, _, arg = spec.partition(":")
        return Fault(kill_embedder_marker=arg) if kind == "kill_embedder" and arg else Fault()


def _prefilter_reason(prefilters: Sequence[Stage], caption: str, width: int, height: int) -> Optional[str]:
    for stage in prefilters:
        table = pa.table({"caption": [caption], "width": [width], "height": [height]})
        reason = stage.apply(table).reasons[0]
        if reason is not None:
            return reason
    return None


def read_and_prepare(batch: pa.Table, transform: Optional[Callable], pixel_shape: tuple[int, ...], with_text: bool,
                     prefilters: Sequence[Stage], rows_per_block: int, failures_dir: str,
                     limits: SampleLimits) -> Iterator[pa.Table]:
    """Ray Data UDF over shard rows (group, shard): yields feature rows with their pixels, `rows_per_block` at a time.
    Without a transform (no embed stage) images are only checked from their headers and no pixels are made."""
    pixel_size = int(np.prod(pixel_shape))
    for group, shard in zip(batch.column("group").to_pylist(), batch.column("shard").to_pylist()):
        expected = (read_shard_sizes([shard]) or {}).get(shard)
        rows: dict[str, list] = {k: [] for k in ("group", "shard", "key", "caption", "captions", "width", "height",
                                                  "read_reason", "embed")}
        pixels: list[np.ndarray] = []
        for item in read_shard(shard, MEMBERS, expected=expected, max_member_bytes=limits.max_member_bytes):
            if isinstance(item, ShardFailure):
                _record_failure(failures_dir, item)
                continue
            caption, count, width, height, reason, image = _inspect(item, with_text, limits)
            # A sample the leading filters will drop is not decoded; the decide phase drops it, under its stage.
            dropped_early = reason is None and _prefilter_reason(prefilters, caption, width, height) is not None
            tensor = None
            if reason is None and not dropped_early and transform is not None:
                try:
                    tensor = np.asarray(transform(load_rgb(image)), dtype=np.float32)
                except SampleSkipped as e:
                    reason = e.reason
            for name, value in (("group", group), ("shard", shard), ("key", item["__key__"]), ("caption", caption),
                                ("captions", count), ("width", width), ("height", height), ("read_reason", reason),
                                ("embed", tensor is not None)):
                rows[name].append(value)
            pixels.append(tensor.reshape(-1) if tensor is not None else np.zeros(pixel_size, np.float32))
            if len(rows["key"]) >= rows_per_block:
                yield _block(rows, pixels, pixel_size, transform is not None)
                rows = {k: [] for k in rows}
                pixels = []
        if rows["key"]:
            yield _block(rows, pixels, pixel_size, transform is not None)


def _inspect(item: dict, with_text: bool, limits: SampleLimits) -> tuple[str, int, int, int, Optional[str], Any]:
    """Caption, caption count, image size and the reason the sample cannot be used (None when it can)."""
    caption, count, width, height, image = "", 0, -1, -1, None
    try:
        if item.get("__oversized__"):
            raise SampleSkipped("member_too_large", item["__oversized__"])
        image = open_image(first_member(item, IMAGE_EXTENSIONS), limits)
        width, height = image.size
        if with_text:
            captions = decode_captions(first_member(item, ("txt",)))
            caption, count = captions[0], len(captions)
    except SampleSkipped as e:
        return caption, count, width, height, e.reason, None
    return caption, count, width, height, None, image


def _block(rows: dict[str, list], pixels: list[np.ndarray], pixel_size: int, with_pixels: bool) -> pa.Table:
    columns = {
        "group": pa.array(rows["group"], pa.int32()), "shard": pa.array(rows["shard"], pa.string()),
        "key": pa.array(rows["key"], pa.string()), "caption": pa.array(rows["caption"], pa.string()),
        "captions": pa.array(rows["captions"], pa.int16()), "width": pa.array(rows["width"], pa.int32()),
        "height": pa.array(rows["height"], pa.int32()), "read_reason": pa.array(rows["read_reason"], pa.string()),
        "embed": pa.array(rows["embed"], pa.bool_()),
    }
    if with_pixels:
        columns["pixels"] = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(pixels)), pixel_size)
    else:  # no embed stage: the features table without embeddings
        del columns["embed"]
        columns["clip_score"] = pa.array(np.full(len(rows["key"]), np.nan, np.float32))
    return pa.table(columns)


def _record_failure(folder: str, failure: ShardFailure) -> None:
    name = hashlib.sha1(failure.shard.encode()).hexdigest()[:16] + ".json"
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"shard": failure.shard, "reason": failure.reason, "detail": failure.detail,
                               "lost": failure.lost}))
    os.replace(tmp, path)


class Embedder:
    """A Ray Data actor: the model loaded once, image (and caption) embeddings for each block of rows."""

    def __init__(self, model_spec: str, pixel_shape: tuple[int, ...], with_text: bool, threads: int, use_gpu: bool,
                 fault: Fault = Fault()) -> None:
        import torch

        from mmpretrain.benchmark.models import load_bench_model

        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.bench = load_bench_model(model_spec, label="curate")
        self.model = self.bench.model.to(self.device).eval()
        self.pixel_shape, self.with_text, self.fault, self.batches = pixel_shape, with_text, fault, 0

    def _faults(self) -> None:
        self.batches += 1
        marker = self.fault.kill_embedder_marker
        if marker and self.batches == 2 and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    def __call__(self, table: pa.Table) -> pa.Table:
        import torch

        self._faults()
        embed = table.column("embed").to_numpy(zero_copy_only=False)
        chosen = np.nonzero(embed)[0]
        flat = table.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        pixels = flat.reshape(table.num_rows, *self.pixel_shape)[chosen]
        features: Optional[np.ndarray] = None
        scores = np.full(table.num_rows, np.nan, np.float32)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.device.type == "cuda"):
            if len(chosen):
                image = self.model.encode("image", torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device),
                                          normalize=True).float()
                features = image.cpu().numpy()
                if self.with_text:
                    captions = [table.column("caption")[int(i)].as_py() for i in chosen]
                    text = self.model.encode("text", self.bench.tokenizer(captions).to(self.device),
                                             normalize=True).float()
                    scores[chosen] = (image * text).sum(-1).cpu().numpy()
        if features is None:
            dim = int(getattr(self, "_dim", 0)) or self._embedding_dim()
            features = np.zeros((0, dim), np.float32)
        self._dim = features.shape[1]
        all_features = np.zeros((table.num_rows, features.shape[1]), np.float32)
        all_features[chosen] = features
        table = table.drop_columns(["pixels", "embed"])
        return table.append_column(EMBEDDING, embedding_array(all_features)).append_column(
            "clip_score", pa.array(scores, pa.float32()))

    def _embedding_dim(self) -> int:
        import torch

        with torch.inference_mode():
            probe = torch.zeros((1, *self.pixel_shape), device=self.device)
            return int(self.model.encode("image", probe, normalize=True).shape[-1])


def pixel_shape_of(transform: Callable) -> tuple[int, ...]:
    """The tensor shape the model's eval transform gives (a fixed crop), from a blank image."""
    from PIL import Image

    return tuple(np.asarray(transform(Image.new("RGB", (64, 64)))).shape)


def analyse(items: list[dict[str, Any]], out: Path, embed: Optional[Embed], prefilters: Sequence[Stage],
            with_text: bool, failures_dir: Path, num_actors: int, transform: Optional[Callable], limits: SampleLimits,
            fault: Fault = Fault(), read_cpus: float = 1.0, actor_cpus: float = 1.0) -> None:
    """Run the analyse pipeline over `items` ({"group", "shard"}) and commit the features to `out` (a folder that
    appears whole: written under a temporary name, then renamed). Without an embed stage only the reading runs."""
    import shutil

    import ray.data

    shape = pixel_shape_of(transform) if transform is not None else (0,)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    dataset = dataset.map_batches(
        read_and_prepare, batch_size=1, batch_format="pyarrow", num_cpus=read_cpus,
        fn_kwargs=dict(transform=transform if embed is not None else None, pixel_shape=shape, with_text=with_text,
                       prefilters=list(prefilters), rows_per_block=embed.rows_per_block if embed else 1024,
                       failures_dir=str(failures_dir), limits=limits))
    if embed is not None:
        dataset = dataset.map_batches(
            Embedder, batch_size=embed.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=actor_cpus,
            num_gpus=embed.gpus_per_actor or None,
            fn_constructor_kwargs=dict(model_spec=embed.model, pixel_shape=shape, with_text=with_text,
                                       threads=embed.threads_per_actor, use_gpu=embed.gpus_per_actor > 0,
                                       fault=fault))
    dataset.write_parquet(str(tmp))
    tmp.mkdir(parents=True, exist_ok=True)  # a wave whose shards held no sample writes no file
    os.replace(tmp, out)
