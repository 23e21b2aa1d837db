"""Per-modality eval inputs: which shard members a modality reads, how one is decoded, and how a batch is embedded.

This is the seam that lets one harness evaluate any tower: a task names its modalities (zero-shot `modality`,
retrieval `between`), and the registry below says, for each, how to turn a sample's bytes into model input:

- image: the image member decoded to RGB (PIL) when the set is read; the model's eval transform when embedded.
- text: the ``.txt`` member's captions (one per line, several per sample); the tokenizer when embedded.
- audio: the audio member decoded, checked (length, silence), resampled to ``model.audio.sample_rate`` and cut into
  ``model.audio.eval_crops`` deterministic crops (`eval_crops`) held as int16 PCM when the set is read; each crop
  embedded, the normalised crop embeddings averaged and renormalised (multi-crop).

What a modality needs from the model (the image transform, the tokenizer, the audio settings) is in `EvalInputs`.
A new modality is a new `Modality` subclass in `MODALITIES`, plus its setting in `EvalInputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from mmpretrain.audio.config import AudioConfig
from mmpretrain.audio.decode import AUDIO_EXTENSIONS, check_silence, eval_crops, read_audio, resample, to_transport
from mmpretrain.data.decode import (IMAGE_EXTENSIONS, TEXT_EXTENSIONS, decode_captions, first_member, load_rgb,
                                    open_image)
from mmpretrain.data.shards import RawSample
from mmpretrain.errors import ConfigError

ImageTransform = Callable[[Image.Image], torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]


class Encoder(Protocol):
    """The slice of the model interface the encoders use."""

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor: ...


@dataclass
class EvalInputs:
    """What turns eval data into model input, per modality: the model's eval image transform, its tokenizer, and
    its audio settings (``model.audio``: sample rate, clip length, eval crops, decoding limits).

    A modality whose setting is None cannot be evaluated; a task that needs it is refused before any data is read.
    """

    image_transform: Optional[ImageTransform] = None
    tokenizer: Optional[Tokenizer] = None
    audio: Optional[AudioConfig] = None

    @classmethod
    def from_model(cls, built: Any, model_config: Any) -> "EvalInputs":
        """From a BuiltModel and its ModelConfig (typed loosely: eval/ does not import the model builder)."""
        audio = model_config.audio if "audio" in list(model_config.towers) else None
        return cls(built.eval_transform, built.tokenizer, audio)


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _encode_in_batches(items: Sequence[Any], size: int, embed: Callable[[Sequence[Any]], torch.Tensor],
                       progress: bool, desc: str) -> torch.Tensor:
    """`embed` over `items` in batches of `size` (with a progress bar), as one float32 CPU tensor."""
    total = (len(items) + size - 1) // size
    chunks = [embed(batch).float().cpu()
              for batch in tqdm(_batches(items, size), total=total, desc=desc, disable=not progress, leave=False)]
    return torch.cat(chunks)


class Modality:
    """One modality's eval input path. `decode` runs when the set is read (raising SampleSkipped for a bad or
    missing member); `encode` embeds decoded items `batch_size` at a time into normalised features [N, D] on CPU."""

    name: str = ""
    extensions: tuple[str, ...] = ()   # the shard members (and folder file suffixes) that hold this modality
    setting: str = ""                  # the EvalInputs field it needs

    def __init__(self, inputs: EvalInputs) -> None:
        self.inputs = inputs

    def present(self, raw: RawSample) -> bool:
        return first_member(raw, self.extensions) is not None

    def decode(self, raw: RawSample) -> Any:
        raise NotImplementedError

    def encode(self, model: Encoder, items: Sequence[Any], batch_size: int, device: str | torch.device,
               progress: bool = False, desc: str = "") -> torch.Tensor:
        raise NotImplementedError


class ImageModality(Modality):
    name, extensions, setting = "image", IMAGE_EXTENSIONS, "image_transform"

    def decode(self, raw: RawSample) -> Image.Image:
        # evaluation takes every image it can read: no size limits (as before audio)
        return load_rgb(open_image(first_member(raw, self.extensions)))

    def encode(self, model: Encoder, items: Sequence[Image.Image], batch_size: int, device: str | torch.device,
               progress: bool = False, desc: str = "images") -> torch.Tensor:
        transform = self.inputs.image_transform
        assert transform is not None

        def embed(batch: Sequence[Image.Image]) -> torch.Tensor:
            pixels = torch.stack([transform(image) for image in batch]).to(device)
            return model.encode("image", pixels, normalize=True)
        return _encode_in_batches(items, batch_size, embed, progress, desc)


class TextModality(Modality):
    """An item is a sample's list of captions; `encode` takes single texts (the caller flattens the lists)."""

    name, extensions, setting = "text", TEXT_EXTENSIONS, "tokenizer"

    def decode(self, raw: RawSample) -> list[str]:
        return decode_captions(first_member(raw, self.extensions))

    def encode(self, model: Encoder, items: Sequence[str], batch_size: int, device: str | torch.device,
               progress: bool = False, desc: str = "texts") -> torch.Tensor:
        tokenizer = self.inputs.tokenizer
        assert tokenizer is not None

        def embed(batch: Sequence[str]) -> torch.Tensor:
            return model.encode("text", tokenizer(list(batch)).to(device), normalize=True)
        return _encode_in_batches(items, batch_size, embed, progress, desc)


class AudioModality(Modality):
    """An item is int16 PCM `[eval_crops, clip_samples]` at the model's sample rate."""

    name, extensions, setting = "audio", AUDIO_EXTENSIONS, "audio"

    def decode(self, raw: RawSample) -> torch.Tensor:
        config = self.inputs.audio
        assert config is not None
        wave, sample_rate = read_audio(first_member(raw, self.extensions), config)
        check_silence(wave, config)
        wave = resample(wave, sample_rate, config.sample_rate)
        return to_transport(eval_crops(wave, config.clip_samples, config.eval_crops))

    def encode(self, model: Encoder, items: Sequence[torch.Tensor], batch_size: int, device: str | torch.device,
               progress: bool = False, desc: str = "audio") -> torch.Tensor:
        """Each clip's crops embedded (at most `batch_size` crops a forward), averaged and renormalised."""
        if not items:
            raise ValueError("no audio items to encode")
        crops = items[0].shape[0]

        def embed(batch: Sequence[torch.Tensor]) -> torch.Tensor:
            waves = torch.stack(list(batch))                       # [B, crops, clip_samples]
            flat = waves.reshape(-1, waves.shape[-1]).to(device)   # [B * crops, clip_samples]
            features = model.encode("audio", flat, normalize=True).float()
            return F.normalize(features.reshape(len(batch), crops, -1).mean(dim=1), dim=-1)
        return _encode_in_batches(items, max(1, batch_size // crops), embed, progress, desc)


MODALITIES: dict[str, type[Modality]] = {"image": ImageModality, "text": TextModality, "audio": AudioModality}


def modality(name: str, inputs: EvalInputs) -> Modality:
    """The named modality bound to its inputs; ConfigError when the caller gave no setting for it."""
    cls = MODALITIES[name]
    if getattr(inputs, cls.setting) is None:
        what = {"image_transform": "an image transform", "tokenizer": "a tokenizer",
                "audio": "the audio settings (model.audio)"}.get(cls.setting, cls.setting)
        raise ConfigError(f"evaluating {name} needs {what}, and none was passed to the eval harness")
    return cls(inputs)
