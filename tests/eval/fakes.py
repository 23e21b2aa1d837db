"""Deterministic stand-in models and small eval sets for the audio / cross-modal eval tests."""

from __future__ import annotations

import io
import json
import random
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image
from torch import nn

from mmpretrain.audio.config import AudioConfig
from tests.conftest import COLOUR_PITCH, COLOURS, colour_flac

CLASSES = list(COLOURS)  # red, green, blue: RGB channel 0, 1, 2 and pitches 330, 660, 1320 Hz
SAMPLE_RATE = 16_000
# The micro audio settings of tests/conftest.audio_overrides (0.25 s clips); only decoding reads them here.
AUDIO = AudioConfig(clip_seconds=0.25, max_seconds=5.0)


def colour_tokens(texts: list[str]) -> torch.Tensor:
    """A tokenizer that reads the colour named in each text (as its class index)."""
    return torch.tensor([next(i for i, c in enumerate(CLASSES) if c in t) for t in texts])


def first_pixel(image: Image.Image) -> torch.Tensor:
    return torch.tensor(image.getpixel((0, 0)), dtype=torch.float32)


class ToneModel(nn.Module):
    """Knows colours in every modality: an image by its strongest channel, a text by its colour word (see
    `colour_tokens`), a clip by the pitch of its spectral peak; each as a one-hot over the three colours.
    `audio_shift` relabels what it hears (1: red sounds as green ...), to see that metrics can fall."""

    def __init__(self, modalities: tuple[str, ...] = ("image", "text", "audio"), audio_shift: int = 0) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.audio_shift = audio_shift
        self.audio_batches: list[torch.Tensor] = []

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if modality == "image":
            classes = x.argmax(dim=1)
        elif modality == "text":
            classes = x
        else:
            assert x.dtype == torch.int16 and x.dim() == 2, (x.dtype, x.shape)  # int16 PCM [B, clip_samples]
            self.audio_batches.append(x)
            spectrum = torch.fft.rfft(x.float(), dim=-1).abs()
            peak_hz = spectrum.argmax(dim=-1).float() * SAMPLE_RATE / x.shape[-1]
            pitches = torch.tensor([COLOUR_PITCH[c] for c in CLASSES])
            classes = (peak_hz.view(-1, 1) / pitches).log2().abs().argmin(dim=1)
            classes = (classes + self.audio_shift) % len(CLASSES)
        return F.one_hot(classes, len(CLASSES)).float()


class HashModel(nn.Module):
    """Fixed random features of the content: a random projection of the wave (int16 as float) or of the pixels
    (`small_pixels`), a random embedding of each text's CRC (`crc_tokens`). Ties are (almost surely) absent."""

    modalities = ["image", "text", "audio"]

    def __init__(self, clip_samples: int, dim: int = 16) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.audio = torch.randn(clip_samples, dim, generator=generator, dtype=torch.float64)
        self.image = torch.randn(48, dim, generator=generator, dtype=torch.float64)
        self.text = torch.randn(997, dim, generator=generator, dtype=torch.float64)

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if modality == "audio":
            features = x.double() @ self.audio
        elif modality == "image":
            features = x.double() @ self.image
        else:
            features = self.text[x]
        features = features.float()
        return F.normalize(features, dim=-1) if normalize else features


def small_pixels(image: Image.Image) -> torch.Tensor:
    """An image transform: the image at 4x4, flattened to 48 values in [0, 1]."""
    return torch.tensor(np.asarray(image.resize((4, 4))), dtype=torch.float32).flatten() / 255


def crc_tokens(texts: list[str]) -> torch.Tensor:
    return torch.tensor([zlib.crc32(t.encode()) % 997 for t in texts])


def png(rgb: tuple[int, int, int], size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def flac(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, wave.astype(np.float32), sample_rate, format="FLAC", subtype="PCM_16")
    return out.getvalue()


def tone(colour: str, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return 0.3 * np.sin(2 * np.pi * COLOUR_PITCH[colour] * t)


def write_samples(folder: Path, samples: list[dict[str, object]], shards: int = 2) -> None:
    """`samples` (dicts of member -> bytes, or str for .txt / dict for .json) into `shards` tar files."""
    folder.mkdir(parents=True, exist_ok=True)
    per = (len(samples) + shards - 1) // shards
    for s in range(shards):
        with wds.TarWriter(str(folder / f"shard-{s:06d}.tar")) as sink:
            for i in range(s * per, min(len(samples), (s + 1) * per)):
                members = {k: json.dumps(v).encode() if k == "json" else v.encode() if isinstance(v, str) else v
                           for k, v in samples[i].items()}
                sink.write({"__key__": f"{i:06d}", **members})


def unique_samples(n: int, seed: int = 0, missing: Optional[dict[str, int]] = None) -> list[dict[str, object]]:
    """Colour samples whose every member is distinct: a jittered image, a detuned tone, two numbered captions."""
    rng = random.Random(seed)
    samples: list[dict[str, object]] = []
    for i in range(n):
        colour = CLASSES[i % 3]
        rgb = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
        sample: dict[str, object] = {"png": png(rgb), "flac": colour_flac(colour, rng),
                                     "txt": f"a {colour} square number {i}\n{colour} thing {i * 7 + 3}",
                                     "json": {"label": colour}}
        for member, every in (missing or {}).items():
            if i % every == every - 1:
                sample.pop(member)
        samples.append(sample)
    return samples
