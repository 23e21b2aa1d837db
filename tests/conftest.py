"""Shared fixtures: tiny shard sets written in the test, and a config that trains the micro towers."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Optional

import pytest
import torch
import webdataset as wds
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}


def _png(rgb: tuple[int, int, int], size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


COLOUR_PITCH = {"red": 330.0, "green": 660.0, "blue": 1320.0}  # Hz: the sound of each colour, octaves apart


def colour_flac(colour: str, rng: random.Random, seconds: float = 0.25) -> bytes:
    """A 16 kHz FLAC tone at the colour's pitch, slightly detuned, with a random level and a little noise."""
    import numpy as np
    import soundfile

    t = np.arange(int(16_000 * seconds)) / 16_000
    wave = 0.3 * rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * COLOUR_PITCH[colour] * rng.uniform(0.99, 1.01) * t)
    wave += 0.01 * np.random.default_rng(rng.randint(0, 2**31)).standard_normal(t.size)
    out = io.BytesIO()
    soundfile.write(out, wave.astype(np.float32), 16_000, format="FLAC", subtype="PCM_16")
    return out.getvalue()


def keep_config_towers(overrides: list[str]) -> list[str]:
    """`micro_overrides` without its image-text towers and pairs: the config's own (e.g. configs/bind.yaml) stay."""
    return [o for o in overrides if not o.startswith(("model.towers=", "model.pairs="))]


def audio_overrides() -> list[str]:
    """Overrides that give the micro model the micro audio tower (0.25 s clips, 32 mel bands)."""
    return ["model.audio.encoder=mmp-ast-micro", "model.audio.n_mels=32", "model.audio.clip_seconds=0.25",
            "model.audio.max_seconds=5", "model.audio.n_fft=256", "model.audio.win_length=256",
            "model.audio.spec_augment.time_mask_param=4", "model.audio.spec_augment.freq_mask_param=4"]


def write_colour_shards(folder: Path, n_shards: int = 2, per_shard: int = 12, seed: int = 0,
                        hard_negatives: bool = False, audio: bool = False,
                        missing_every: Optional[dict[str, int]] = None) -> list[str]:
    """Solid-colour images captioned with their colour; json carries the colour as the label.

    With `hard_negatives`, each sample has two captions and a .neg.json naming the other colours. With `audio`,
    each has a `.flac` tone whose pitch is the colour's. `missing_every={"image": 3}` leaves the image out of every
    third sample (by index), and so on per modality (image, txt, flac)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = list(COLOURS)
    sizes, index = {}, 0
    for s in range(n_shards):
        name = f"shard-{s:06d}.tar"
        with wds.TarWriter(str(folder / name)) as sink:
            for _ in range(per_shard):
                colour = names[index % len(names)]
                jitter = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
                sample = {"__key__": f"{index:09d}", "png": _png(jitter), "txt": f"a {colour} square",
                          "json": json.dumps({"label": colour, "index": index}).encode()}
                if hard_negatives:
                    sample["txt"] += f"\nsomething {colour}"
                    others = [f"a {other} square" for other in names if other != colour]
                    sample["neg.json"] = json.dumps(others).encode()
                if audio:
                    sample["flac"] = colour_flac(colour, rng)
                for member, every in (missing_every or {}).items():
                    if index % every == every - 1:
                        sample.pop("png" if member == "image" else member)
                sink.write(sample)
                index += 1
        sizes[name] = per_shard
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return [str(folder / f"shard-{s:06d}.tar") for s in range(n_shards)]


@pytest.fixture
def colour_shards(tmp_path: Path) -> Path:
    folder = tmp_path / "colours"
    write_colour_shards(folder)
    return folder


def micro_overrides(data_dir: Path, output_dir: Path, steps: int = 4) -> list[str]:
    """Overrides that make any config train the micro image and text towers on `data_dir` for a few steps (the
    demo config's audio tower taken out: add `model.towers=[...]` after these, with `audio_overrides()`)."""
    return [
        "model.name=mmp-test-micro", "model.towers=[image,text]", "model.pairs=[]", f"data.train=[{data_dir}]",
        "data.batch_size=6", "data.num_workers=0",
        "data.shuffle_buffer=8", f"train.steps={steps}", "train.log_every=2", "train.progress=false",
        "train.device=cpu", "optim.warmup_steps=1", f"output_dir={output_dir}", "run_name=micro",
    ]


def pixel_id(image: Image.Image) -> torch.Tensor:
    """An image transform for stream tests: the sample id written into pixel (0, 0) as red * 256 + green."""
    red, green, _ = image.convert("RGB").getpixel((0, 0))
    return torch.tensor(red * 256 + green)


def no_tokens(captions: list[str]) -> torch.Tensor:
    """A tokenizer for stream tests that do not look at text."""
    return torch.zeros(len(captions), 1, dtype=torch.long)


def id_loader(config, seed: int = 0, rank: int = 0, world_size: int = 1):
    """A TrainLoader whose batches carry sample ids (see `pixel_id`) as `image` and no text."""
    from mmpretrain.data.loader import TrainLoader
    from mmpretrain.data.stages import StageEnv

    return TrainLoader(config, StageEnv(config, pixel_id, no_tokens), seed, rank, world_size)


def batch_ids(loader, batches: int) -> list[int]:
    """The sample ids of the next `batches` batches of an `id_loader`, in order."""
    return [i for _ in range(batches) for i in loader.next_batch()["image"].view(-1).tolist()]


def write_id_shards(folder: Path, first_id: int, counts: list[int], sizes: bool = True, caption: str = "x") -> int:
    """Shards of 2x2 PNGs whose pixel encodes a sample id (first_id, first_id + 1, ...), `counts[i]` samples in
    shard i, each captioned `caption`; returns the next unused id. Use with `config.limits.min_side = 1`."""
    folder.mkdir(parents=True, exist_ok=True)
    i, sizes_json = first_id, {}
    for s, count in enumerate(counts):
        name = f"shard-{s:06d}.tar"
        with wds.TarWriter(str(folder / name)) as sink:
            for _ in range(count):
                png = io.BytesIO()
                Image.new("RGB", (2, 2), (i // 256, i % 256, 0)).save(png, format="PNG")
                sink.write({"__key__": f"{i:09d}", "png": png.getvalue(), "txt": caption})
                i += 1
        sizes_json[name] = count
    if sizes:
        (folder / "sizes.json").write_text(json.dumps(sizes_json))
    return i
