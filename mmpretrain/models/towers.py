"""Build towers from open_clip's model factory: its named configs (ViT-B-32, RN50, ...) plus ours in
configs/models/. We never write a ViT; we take open_clip's towers, tokenizer and transforms as they are."""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Callable, Optional

import open_clip
import torch
from PIL import Image
from torch import nn

from mmpretrain.errors import ConfigError, require
from mmpretrain.audio.config import AudioConfig
from mmpretrain.audio.features import LogMel, SpecAugment
from mmpretrain.models.audio_tower import build_audio_encoder, known_audio_encoders
from mmpretrain.models.multitower import MultiTower
from mmpretrain.models.pairs import Pair, PairConfig, resolve_pairs
from mmpretrain.paths import configs_dir

log = logging.getLogger(__name__)

ImageTransform = Callable[[Image.Image], torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]


TOWERS = ("image", "text", "audio")


@dataclass
class TowerOptions:
    """`model.image`, `model.text`: what is set per open_clip tower."""

    locked: bool = False  # LiT: frozen (no gradient, no optimizer state, eval mode), e.g. to align a new modality


@dataclass
class AudioTowerConfig(AudioConfig):
    """`model.audio`: the signal settings (mmpretrain/audio/config.py) plus the encoder that reads them."""

    encoder: str = "mmp-ast-tiny"     # an audio encoder config in configs/models/ (JSON with audio_cfg)
    pretrained: Optional[str] = None  # a local weights file (.safetensors / .pt): ours, timm's, or AST's layout
    locked: bool = False
    # The log-mel (dB) is standardised with these before the encoder, as AST does with its dataset's statistics
    norm_mean: float = -40.0
    norm_std: float = 20.0

    def validate(self) -> None:
        super().validate()
        if self.encoder not in known_audio_encoders():
            raise ConfigError(f"model.audio.encoder: unknown audio encoder {self.encoder!r}; known: "
                              f"{known_audio_encoders()}")
        require(self.norm_std > 0, "model.audio.norm_std", self.norm_std, "> 0")
        if self.pretrained and not os.path.isfile(self.pretrained):
            raise ConfigError(f"model.audio.pretrained: no such file {self.pretrained!r}")


@dataclass
class ModelConfig:
    """Which towers to build (open_clip's image and text towers, our audio tower), which pairs they align, and
    how the contrastive heads start."""

    name: str = "mmp-tiny-vit"                # open_clip config name (image + text towers), or one in configs/models/
    pretrained: Optional[str] = None          # open_clip pretrained tag or local checkpoint path
    init_logit_scale: Optional[float] = None  # image-text pair: log of the initial scale; None = log(1/0.07)
    init_logit_bias: Optional[float] = None   # image-text pair: set it (e.g. -10) for the sigmoid loss's bias
    max_logit_scale: float = 100.0            # every pair's scale is clamped to this, as in CLIP
    towers: list[str] = field(default_factory=lambda: ["image", "text"])  # any of image, text, audio (>= 2)
    pairs: list[PairConfig] = field(default_factory=list)  # contrasted pairs (models/pairs.py); empty: all pairs
    image: TowerOptions = field(default_factory=TowerOptions)
    text: TowerOptions = field(default_factory=TowerOptions)
    audio: AudioTowerConfig = field(default_factory=AudioTowerConfig)

    def validate(self) -> None:
        if self.name not in known_model_names():
            raise ConfigError(f"model.name: unknown model {self.name!r}: not an open_clip config nor one in "
                              f"{configs_dir() / 'models'} (see open_clip.list_models())")
        require(self.max_logit_scale > 0, "model.max_logit_scale", self.max_logit_scale, "> 0")
        unknown = [t for t in self.towers if t not in TOWERS]
        if unknown or len(set(self.towers)) != len(self.towers) or len(self.towers) < 2:
            raise ConfigError(f"model.towers: name two or more different towers of {list(TOWERS)}, got "
                              f"{list(self.towers)}")
        if self.pretrained:
            check_pretrained(self.name, self.pretrained)
        if "audio" in self.towers:
            self.audio.validate()
        if all(getattr(self, t).locked for t in self.towers):
            raise ConfigError("model: every tower is locked (model.<tower>.locked): nothing would train")

    def resolved_pairs(self, default_loss: str = "clip") -> list[Pair]:
        return resolve_pairs(list(self.pairs), list(self.towers), default_loss)


def check_pretrained(name: str, pretrained: str) -> None:
    """`model.pretrained` is one of open_clip's tags for the model or an existing file: said in one line at
    config time, not as open_clip's traceback after the towers were built."""
    if os.path.isfile(pretrained):
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained in tags:
        return
    looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if looks_like_path:
        raise ConfigError(f"model.pretrained: no such file {pretrained!r}")
    known = ", ".join(tags) if tags else "none (give a local checkpoint file)"
    raise ConfigError(f"model.pretrained: {pretrained!r} is neither a file nor an open_clip pretrained tag of "
                      f"{name!r} (its tags: {known})")


@dataclass
class BuiltModel:
    """The towers and what feeds them. No train transform: training builds its own from `preprocess` and the
    augmentation config (mmpretrain.data.augment.build_train_transform), so open_clip's is not kept."""

    model: MultiTower
    eval_transform: ImageTransform
    tokenizer: Tokenizer
    preprocess: dict = field(default_factory=dict)  # open_clip's preprocess cfg: size, mean, std, interpolation


_registered = False


def register_project_configs() -> None:
    """Make configs/models/*.json visible to open_clip's factory (once per process)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(configs_dir() / "models")
        _registered = True


def known_model_names() -> list[str]:
    register_project_configs()
    return list(open_clip.list_models())


class AudioTower(nn.Module):
    """Waveform -> log-mel (on the device, fp32) -> standardised -> SpecAugment (training only) -> encoder."""

    def __init__(self, config: AudioTowerConfig, encoder: nn.Module) -> None:
        super().__init__()
        self.logmel = LogMel(config)
        self.spec_augment = SpecAugment(config.spec_augment)
        self.encoder = encoder
        self.norm_mean, self.norm_std = config.norm_mean, config.norm_std

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mel = (self.logmel(wave) - self.norm_mean) / self.norm_std
        return self.encoder(self.spec_augment(mel).to(self.encoder.proj.weight.dtype))


def build_audio_tower(config: AudioTowerConfig, embed_dim: Optional[int]) -> AudioTower:
    """The audio tower `model.audio` names, checked against the shared space and the log-mel it is fed."""
    encoder = build_audio_encoder(config.encoder, config.pretrained)
    cfg = encoder.config.audio_cfg
    if cfg.n_mels != config.n_mels:
        raise ConfigError(f"model.audio.n_mels={config.n_mels} but the encoder {config.encoder!r} reads "
                          f"{cfg.n_mels} mel bands")
    if embed_dim is not None and encoder.output_dim != embed_dim:
        raise ConfigError(f"model.audio.encoder {config.encoder!r} embeds into {encoder.output_dim} dimensions, the "
                          f"text tower into {embed_dim}: pick an encoder config with embed_dim {embed_dim}")
    return AudioTower(config, encoder)


def build_model(config: ModelConfig, loss_name: str = "clip") -> BuiltModel:
    """Create the towers `config.towers` names (image and text through open_clip's factory, audio from timm), the
    transforms and tokenizer, and a head per contrasted pair (`loss_name`: the pairs' default loss kind)."""
    config.validate()
    head_kwargs = {}
    if config.init_logit_scale is not None:
        head_kwargs["init_logit_scale"] = config.init_logit_scale
    if config.init_logit_bias is not None:
        head_kwargs["init_logit_bias"] = config.init_logit_bias
    # force_custom_text gives the text tower its own module (clip.text), so each tower is one nn.Module.
    # nonscalar_logit_scale makes scale and bias shape [1]: DeepSpeed 0.19's start-up broadcast views every
    # parameter as bytes, which fails on 0-dim tensors. Export squeezes them back to open_clip's scalars.
    try:
        clip, _, eval_transform = open_clip.create_model_and_transforms(
            config.name, pretrained=config.pretrained, force_custom_text=True, nonscalar_logit_scale=True,
            **head_kwargs)
    except Exception as e:
        if not config.pretrained:
            raise
        # A corrupt or foreign file (torch.load's weights-only refusal spans many lines), a failed download
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, pickle.UnpicklingError):  # torch's message suggests weights_only=False: never here
            cause = "torch.load (weights only) refused it: the file is corrupt or holds pickled objects"
        raise ConfigError(f"model.pretrained: cannot load {config.pretrained!r} into {config.name!r}: "
                          f"{cause}") from None
    pairs = config.resolved_pairs(loss_name)
    towers: dict[str, nn.Module] = {"image": clip.visual, "text": clip.text}
    if "audio" in config.towers:
        towers["audio"] = build_audio_tower(config.audio, embed_dim=clip.text.text_projection.shape[1]
                                            if "text" in config.towers else None)
    towers = {name: towers[name] for name in config.towers}
    has_image_text = any(p.key == "image_text" for p in pairs)
    model = MultiTower(
        towers=towers,
        logit_scale=clip.logit_scale if has_image_text else None,
        logit_bias=getattr(clip, "logit_bias", None) if has_image_text else None,
        max_logit_scale=config.max_logit_scale,
        pairs=pairs,
        locked=[name for name in config.towers if getattr(config, name).locked],
    )
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built %s: %.2fM parameters", config.name, n_params / 1e6)
    return BuiltModel(model, eval_transform, open_clip.get_tokenizer(config.name),
                      dict(open_clip.get_model_preprocess_cfg(clip)))
