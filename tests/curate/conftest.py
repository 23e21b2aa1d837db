"""Tiny curation inputs made in the test: noise images with random captions, planted duplicates, a leaked evaluation
image, broken samples and a truncated shard; a seeded micro model saved as an open_clip pretrained file; one
local Ray (2 CPUs, small object store) for the whole module."""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from mmpretrain.data.shard_writer import ShardWriter



def noise_png(seed: int, size: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


COLOURS = ["red", "green", "blue", "yellow"]
NOUNS = ["dog", "cat", "tree", "car", "house", "boat"]


def caption(seed: int) -> str:
    """Two coloured things: a caption the attribute-swap negative generator applies to."""
    rng = random.Random(seed)
    first, second = rng.sample(COLOURS, 2)
    return f"a {first} {rng.choice(NOUNS)} next to a {second} {rng.choice(NOUNS)}"


def write_eval_set(folder: Path, n: int = 6) -> list[bytes]:
    images = [noise_png(10_000 + i) for i in range(n)]
    with ShardWriter(folder, 100, prefix="eval") as writer:
        for i, image in enumerate(images):
            writer.write(f"e{i:03d}", image, "png", f"an evaluation image {i}")
    return images


def write_inputs(folder: Path, eval_images: list[bytes], shards: int = 4, per_shard: int = 12) -> dict[str, str]:
    """Shards of distinct noise images; returns the planted samples' keys -> what they are.

    Planted: an exact copy of sample 0 (duplicate), a copy of evaluation image 0 (leak), an image that is not an
    image (unreadable), a one-word caption (too short for min_caption_words=2), and a sample without a caption
    (a raw tar member set: the shard writer refuses to write one).
    """
    planted: dict[str, str] = {}
    index = 0
    with ShardWriter(folder, per_shard, prefix="in") as writer:
        for i in range(shards * per_shard - 4):
            key = f"s{index:04d}"
            writer.write(key, noise_png(index), "png", caption(index), {"i": index})
            index += 1
        for kind, image, text in (("duplicate", noise_png(0), caption(0)), ("leak", eval_images[0], "a leaked one"),
                                  ("unreadable", b"this is not a png", caption(1)),
                                  ("short_caption", noise_png(999), "word")):
            key = f"s{index:04d}"
            writer.write(key, image, "png", text, {"i": index})
            planted[key] = kind
            index += 1
    # One more shard written raw: a sample with no caption, then a member cut short (a truncated shard).
    raw = folder / "in-999999.tar"
    with wds.TarWriter(str(raw), encoder=False) as tar:
        tar.write({"__key__": "s9000", "png": noise_png(9000)})
        tar.write({"__key__": "s9001", "png": noise_png(9001), "txt": caption(9001).encode()})
    data = raw.read_bytes()
    cut = data.index(b"s9001.png") + 512 + 100         # inside the second sample's image data
    raw.write_bytes(data[:cut])
    planted["s9000"] = "no_caption"
    sizes = json.loads((folder / "sizes.json").read_text())
    sizes["in-999999.tar"] = 2
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return planted


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory) -> str:
    """`mmp-test-micro:<file>`: the micro open_clip model with seeded weights, loadable by every Ray actor."""
    import open_clip

    from mmpretrain.models.towers import register_project_configs

    register_project_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("mmp-test-micro")
    path = tmp_path_factory.mktemp("model") / "micro.pt"
    torch.save(model.state_dict(), path)
    return f"mmp-test-micro:{path}"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 * 2**20, logging_level="ERROR")
    yield
    ray.shutdown()


def read_output_keys(shards_dir: Path) -> list[str]:
    """Every key in the output shards, read by webdataset's own reader (not ours)."""
    urls = sorted(str(p) for p in shards_dir.glob("*.tar"))
    return [sample["__key__"] for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
