"""An AST-style audio tower: timm's VisionTransformer over a log-mel spectrogram seen as a 1-channel image.

Nothing here is a transformer written by hand: the trunk is `timm.models.vision_transformer.VisionTransformer`
(or a named timm ViT with our input size), the only additions are a patch embedding with a stride below the patch
size (AST's overlapping patches, a subclass of timm's PatchEmbed), a fixed-length time axis, and a projection into
the shared embedding space, like open_clip's visual `proj`.

Time length: the positional embedding is built for `audio_cfg.frames` frames, and inputs of another length are
padded at the end with `pad_value` or cropped to their first `frames` frames (as AST and CLAP fit clips to a fixed
length). timm's dynamic_img_size was not chosen: it interpolates the positional embedding, which would stretch a
short clip's time axis instead of placing it at the start of the window. Random crops belong in the data pipeline;
the crop here is deterministic so evaluation is reproducible.

Configs are JSON files in configs/models/ carrying `audio_cfg` (open_clip's registry, which scans the same folder,
only keeps files with both `vision_cfg` and `text_cfg`, so these are invisible to it).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Optional, Union

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.layers import PatchEmbed, resample_abs_pos_embed, resample_patch_embed
from timm.models import adapt_input_conv
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mmpretrain.errors import ConfigError, require
from mmpretrain.paths import configs_dir

log = logging.getLogger(__name__)

Size2 = Union[int, list[int], tuple[int, int]]


def _pair(value: Size2) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@dataclass
class AudioCfg:
    """The `audio_cfg` section. With `timm_model_name`, the architecture comes from that timm ViT and the fields
    width/depth/heads/mlp_ratio, when given, override it; without it they are required."""

    n_mels: int
    frames: int                                  # time length the positional embedding is built for
    patch_size: Size2 = 16                       # [mel, time] or one int
    patch_stride: Optional[Size2] = None         # < patch_size: overlapping patches as in AST; None = patch_size
    timm_model_name: Optional[str] = None        # e.g. vit_base_patch16_224 (never downloaded)
    width: Optional[int] = None
    depth: Optional[int] = None
    heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    pool: str = "token"                          # "token" (class token, as AST) or "avg" over patch tokens
    drop_path_rate: float = 0.0
    pad_value: float = 0.0                       # the front end's value for silence, used to pad short inputs

    @property
    def stride(self) -> tuple[int, int]:
        return _pair(self.patch_stride if self.patch_stride is not None else self.patch_size)


@dataclass
class AudioEncoderConfig:
    """A configs/models/<name>.json audio model: `{"embed_dim": int, "audio_cfg": {...}}`."""

    embed_dim: int
    audio_cfg: AudioCfg

    @classmethod
    def from_json(cls, path: Path) -> "AudioEncoderConfig":
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"audio model config {path}: unreadable ({type(e).__name__}: {e})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("audio_cfg"), dict) or "embed_dim" not in raw:
            raise ConfigError(f"audio model config {path}: expected {{'embed_dim': int, 'audio_cfg': {{...}}}}")
        allowed = {f.name for f in fields(AudioCfg)}
        unknown = sorted(set(raw["audio_cfg"]) - allowed)
        if unknown:
            raise ConfigError(f"audio model config {path}: unknown audio_cfg keys {unknown} "
                              f"(known: {sorted(allowed)})")
        try:
            config = cls(embed_dim=raw["embed_dim"], audio_cfg=AudioCfg(**raw["audio_cfg"]))
        except TypeError as e:  # a required key is missing
            raise ConfigError(f"audio model config {path}: {e}") from None
        config.validate(str(path))
        return config

    def validate(self, where: str) -> None:
        a = self.audio_cfg
        require(isinstance(self.embed_dim, int) and self.embed_dim > 0, f"{where}: embed_dim", self.embed_dim,
                "a positive int")
        patch, stride = _pair(a.patch_size), a.stride
        require(all(0 < s <= p for s, p in zip(stride, patch)), f"{where}: audio_cfg.patch_stride",
                a.patch_stride, f"between 1 and patch_size {list(patch)} (a larger stride skips input)")
        require(a.n_mels >= patch[0] and a.frames >= patch[1], f"{where}: audio_cfg.patch_size", a.patch_size,
                f"at most [n_mels, frames] = [{a.n_mels}, {a.frames}]")
        require(a.pool in ("token", "avg"), f"{where}: audio_cfg.pool", a.pool, "'token' or 'avg'")
        if a.timm_model_name is None:
            missing = [k for k in ("width", "depth", "heads") if getattr(a, k) is None]
            require(not missing, f"{where}: audio_cfg", missing, "width, depth and heads (or timm_model_name)")
        elif not timm.is_model(a.timm_model_name):
            raise ConfigError(f"{where}: audio_cfg.timm_model_name: unknown timm model {a.timm_model_name!r}")


class StridedPatchEmbed(PatchEmbed):
    """timm's PatchEmbed with a conv stride below the patch size (AST's overlapping patches). Only timm's
    fixed-size path is valid for it (strict_img_size, no dynamic padding), which the encoder guarantees by
    fitting every input to `frames`."""

    def __init__(self, *args, stride: tuple[int, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.proj.stride = stride
        # Patches along (mel, time); frames past the last whole patch are not seen, as in any strided conv.
        self.grid_size = tuple((n - p) // s + 1 for n, p, s in zip(self.img_size, self.patch_size, stride))
        self.num_patches = self.grid_size[0] * self.grid_size[1]


def _build_trunk(a: AudioCfg) -> VisionTransformer:
    """timm's ViT with a 1-channel [n_mels, frames] input and no classifier head (it returns pooled features)."""
    patch = _pair(a.patch_size)
    kwargs = dict(img_size=(a.n_mels, a.frames), patch_size=patch, in_chans=1, num_classes=0,
                  global_pool=a.pool, drop_path_rate=a.drop_path_rate,
                  embed_layer=PatchEmbed if a.stride == patch else partial(StridedPatchEmbed, stride=a.stride))
    arch = dict(embed_dim=a.width, depth=a.depth, num_heads=a.heads, mlp_ratio=a.mlp_ratio)
    kwargs.update({k: v for k, v in arch.items() if v is not None})
    if a.timm_model_name is None:
        return VisionTransformer(**kwargs)
    try:
        trunk = timm.create_model(a.timm_model_name, pretrained=False, **kwargs)
    except TypeError as e:  # a timm model that is not a ViT rejects the ViT arguments
        raise ConfigError(f"audio_cfg.timm_model_name: {a.timm_model_name!r} is not a timm VisionTransformer "
                          f"({e})") from None
    if not isinstance(trunk, VisionTransformer):
        raise ConfigError(f"audio_cfg.timm_model_name: {a.timm_model_name!r} is not a timm VisionTransformer")
    return trunk


class AudioEncoder(nn.Module):
    """Log-mel features [B, n_mels, frames] -> un-normalized embeddings [B, embed_dim]."""

    def __init__(self, config: AudioEncoderConfig, name: str = "audio") -> None:
        super().__init__()
        self.config, self.name = config, name
        self.trunk = _build_trunk(config.audio_cfg)
        width = self.trunk.num_features
        self.proj = nn.Linear(width, config.embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=width ** -0.5)  # open_clip's init of its visual `proj`
        self.output_dim = config.embed_dim

    def fit_frames(self, features: torch.Tensor) -> torch.Tensor:
        """Pad at the end with `pad_value` or keep the first `frames` frames (see the module docstring)."""
        a = self.config.audio_cfg
        if features.ndim != 3 or features.shape[1] != a.n_mels:
            raise ConfigError(f"audio encoder {self.name}: expected log-mel features [B, {a.n_mels}, frames], "
                              f"got {list(features.shape)} (the front end's n_mels must equal audio_cfg.n_mels)")
        frames = features.shape[-1]
        if frames < a.frames:
            return F.pad(features, (0, a.frames - frames), value=a.pad_value)
        return features[..., :a.frames]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.fit_frames(features).unsqueeze(1)  # the channel dim of a 1-channel image
        return self.proj(self.trunk(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    def load_pretrained(self, path: Union[str, Path]) -> None:
        """Load our encoder's state dict, or any timm-layout ViT's (an AST, a DeiT/ImageNet ViT) from a local
        .safetensors/.pt/.pth/.bin file. A ViT's patch embedding is summed over its input channels (as AST does
        with DeiT) and its positional embedding resampled to our grid; the projection is kept when the file is
        ours. Missing and unexpected keys are logged in one line; a file with nothing usable is a ConfigError."""
        path = Path(path)
        state = _read_state_dict(path)
        prefix = _trunk_prefix(state, path)
        trunk_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        own = {f"trunk.{k}": v for k, v in self._adapt_vit(trunk_state, path).items()}
        proj_key = prefix[:-len("trunk.")] + "proj.weight"  # ours, alone or inside a multi-tower checkpoint
        if prefix.endswith("trunk.") and proj_key in state:
            own["proj.weight"] = state[proj_key]
        expected = self.state_dict()
        wrong = [f"{k} {list(v.shape)} != {list(expected[k].shape)}" for k, v in own.items()
                 if k in expected and v.shape != expected[k].shape]
        if wrong:
            raise ConfigError(f"pretrained audio weights {path}: another architecture: {len(wrong)} tensors of "
                              f"other shapes, e.g. {wrong[0]}")
        missing, unexpected = self.load_state_dict(own, strict=False)
        if len(unexpected) == len(own):
            raise ConfigError(f"pretrained audio weights {path}: no tensor matches the audio encoder {self.name}")
        log.info("loaded %d tensors into audio encoder %s from %s (prefix %r); missing: %s; unexpected: %s",
                 len(own) - len(unexpected), self.name, path, prefix, missing or "none", unexpected or "none")

    def _adapt_vit(self, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
        """A timm-layout ViT state dict fitted to our 1-channel input, patch size and positional grid."""
        state = dict(state)
        patch_w = state.get("patch_embed.proj.weight")
        image = patch_w is not None and patch_w.ndim == 4 and patch_w.shape[1] == 3
        if patch_w is not None and patch_w.ndim == 4:
            patch_w = adapt_input_conv(1, patch_w, base_chans=patch_w.shape[1])
            target = self.trunk.patch_embed.proj.weight.shape[-2:]
            if patch_w.shape[-2:] != target:
                patch_w = resample_patch_embed(patch_w, list(target))
            state["patch_embed.proj.weight"] = patch_w
        if "pos_embed" in state and self.trunk.pos_embed is not None:
            state["pos_embed"] = self._resample_pos_embed(state, image=image, path=path)
        return state

    def _resample_pos_embed(self, state: dict[str, torch.Tensor], image: bool, path: Path) -> torch.Tensor:
        """Our grid from the file's. The source keeps its prefix tokens (class, distillation as in AST/DeiT,
        registers) ahead of the patches; we keep the first ones we have. The source grid is not in the file:
        an image ViT's is square, an audio ViT's is taken to have our mel rows (another clip length), else
        square."""
        pos = state["pos_embed"]
        source_prefix = sum(state[k].shape[1] for k in ("cls_token", "dist_token", "reg_token") if k in state)
        ours = self.trunk.num_prefix_tokens
        n = pos.shape[1] - source_prefix
        rows = self.trunk.patch_embed.grid_size[0]
        side = math.isqrt(n)
        candidates = [(side, side)] if side * side == n else []
        if not image and n % rows == 0:
            candidates.insert(0, (rows, n // rows))
        if not candidates or source_prefix < ours:
            raise ConfigError(f"pretrained audio weights {path}: cannot tell the positional grid of pos_embed "
                              f"{list(pos.shape)} with {source_prefix} prefix tokens")
        pos = torch.cat([pos[:, :ours], pos[:, source_prefix:]], dim=1)
        return resample_abs_pos_embed(pos, new_size=list(self.trunk.patch_embed.grid_size),
                                      old_size=list(candidates[0]), num_prefix_tokens=ours)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or torch.load with weights_only=True, so a file cannot run code. A checkpoint
    that wraps the weights under state_dict/model/module is unwrapped."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every loader failure means the same thing: not a weights file
        raise ConfigError(f"pretrained audio weights {path}: unreadable as weights only ({_reason(e)})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"pretrained audio weights {path}: not a state dict ({type(state).__name__})")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _reason(error: Exception) -> str:
    """One line for a loader's error. torch's refusal of pickled code is a paragraph; its line naming the
    refused global is the one that says what the file holds."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    refused = [line.split(" Please use")[0] for line in lines if line.startswith("WeightsUnpickler error:")]
    return f"{type(error).__name__}: {(refused or lines or [''])[0]}"


def _trunk_prefix(state: dict[str, torch.Tensor], path: Path) -> str:
    """Where the ViT sits in the file: '' (timm), 'trunk.' (ours), 'module.v.' (AST), 'towers.audio.trunk.'
    (a multi-tower checkpoint), ... found as what precedes its first block."""
    prefixes = {k[:k.index("blocks.0.")] for k in state if "blocks.0." in k}
    prefixes = {p for p in prefixes if p == "" or p.endswith(".")}
    if len(prefixes) > 1:
        prefixes = {p for p in prefixes if "audio" in p} or prefixes
    if len(prefixes) != 1:
        found = f"several ({sorted(prefixes)})" if prefixes else "no transformer blocks (blocks.0.*)"
        raise ConfigError(f"pretrained audio weights {path}: {found}; expected one timm-layout ViT")
    return prefixes.pop()


def known_audio_encoders() -> list[str]:
    """Names of the configs/models/*.json files that carry `audio_cfg`."""
    names = []
    for path in sorted((configs_dir() / "models").glob("*.json")):
        try:
            if "audio_cfg" in json.loads(path.read_text()):
                names.append(path.stem)
        except (OSError, ValueError):
            continue  # not ours to report: open_clip reads these files too
    return names


def build_audio_encoder(name_or_path: str, pretrained: Optional[str] = None) -> AudioEncoder:
    """The encoder of configs/models/<name>.json (or of a JSON file path), with local weights if given."""
    path = configs_dir() / "models" / f"{name_or_path}.json"
    if name_or_path not in known_audio_encoders():
        path = Path(name_or_path)
        if path.suffix != ".json" or not path.is_file():
            raise ConfigError(f"unknown audio encoder {name_or_path!r}: known audio configs are "
                              f"{known_audio_encoders()} (in {configs_dir() / 'models'}) or a JSON file path")
    encoder = AudioEncoder(AudioEncoderConfig.from_json(path), name=path.stem)
    if pretrained is not None:
        encoder.load_pretrained(pretrained)
    n_params = sum(p.numel() for p in encoder.parameters())
    log.info("built audio encoder %s: %.2fM parameters, %d patches", path.stem, n_params / 1e6,
             encoder.trunk.patch_embed.num_patches)
    return encoder
