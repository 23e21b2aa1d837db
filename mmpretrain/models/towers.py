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

from mmpretrain.errors import ConfigError, require
from mmpretrain.models.multitower import MultiTower
from mmpretrain.paths import configs_dir

log = logging.getLogger(__name__)

ImageTransform = Callable[[Image.Image], torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]


@dataclass
class ModelConfig:
    """Which open_clip model to build and how to initialise the contrastive head."""

    name: str = "mmp-tiny-vit"                # open_clip config name, or one in configs/models/
    pretrained: Optional[str] = None          # open_clip pretrained tag or local checkpoint path
    init_logit_scale: Optional[float] = None  # log of the initial scale; None = open_clip's log(1/0.07)
    init_logit_bias: Optional[float] = None   # set it (e.g. -10) to create the sigmoid loss's learnable bias
    max_logit_scale: float = 100.0            # scale is clamped to this after each step, as in CLIP

    def validate(self) -> None:
        if self.name not in known_model_names():
            raise ConfigError(f"model.name: unknown model {self.name!r}: not an open_clip config nor one in "
                              f"{configs_dir() / 'models'} (see open_clip.list_models())")
        require(self.max_logit_scale > 0, "model.max_logit_scale", self.max_logit_scale, "> 0")
        if self.pretrained:
            check_pretrained(self.name, self.pretrained)


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


def build_model(config: ModelConfig) -> BuiltModel:
    """Create the towers, transforms and tokenizer for `config.name` through open_clip."""
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
    model = MultiTower(
        towers={"image": clip.visual, "text": clip.text},
        logit_scale=clip.logit_scale,
        logit_bias=getattr(clip, "logit_bias", None),
        max_logit_scale=config.max_logit_scale,
    )
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built %s: %.2fM parameters", config.name, n_params / 1e6)
    return BuiltModel(model, eval_transform, open_clip.get_tokenizer(config.name),
                      dict(open_clip.get_model_preprocess_cfg(clip)))
