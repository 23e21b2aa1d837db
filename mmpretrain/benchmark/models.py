"""The models a benchmark compares, from what users point at: a training run directory (its newest intact
checkpoint), an export directory (open_clip's format or ours), or an open_clip model name with an optional
pretrained file or tag.

    --model runs/demo                       a run directory (or a checkpoint file)
    --model exports/demo                    an export: open_clip_config.json (open_clip) or mmpretrain_config.json
    --model ViT-B-32:/ckpts/epoch_32.pt     open_clip name : pretrained file (or tag)
    --model ep32=ViT-B-32:/ckpts/epoch_32.pt    the same, labelled "ep32" in the results

Each resolves to a `BenchModel`: a label, something with ``encode(modality, x, normalize)``, the eval image
transform and tokenizer, and `preprocess_key`, the transform's description: models whose keys are equal see the
same pixels, so the runner decodes and transforms each image once for all of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.errors import ConfigError

log = logging.getLogger(__name__)


class OpenClipAdapter(nn.Module):
    """open_clip's CLIP/CustomTextCLIP behind the harness's ``encode(modality, x, normalize)``."""

    modalities = ("image", "text")

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if modality == "image":
            features = self.clip.encode_image(x)
        elif modality == "text":
            features = self.clip.encode_text(x)
        else:
            raise ConfigError(f"an open_clip model has no {modality} tower")
        return F.normalize(features, dim=-1) if normalize else features


@dataclass
class BenchModel:
    label: str
    spec: str
    model: nn.Module                       # has encode(modality, x, normalize) and .modalities
    transform: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]

    @property
    def preprocess_key(self) -> str:
        # torchvision transforms describe themselves fully (sizes, interpolation, mean/std); open_clip's RGB
        # conversion is one module-level function, the same object in every model of this process.
        return repr(self.transform)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(getattr(self.model, "modalities", ("image", "text")))


def split_spec(spec: str) -> tuple[str, str]:
    """``LABEL=SPEC`` -> (LABEL, SPEC); a bare SPEC is labelled by its last path part (a run or export folder's
    name, a file's stem) or, for an open_clip name, ``name`` or ``name:pretrained-stem``."""
    if "=" in spec and not Path(spec).exists():
        label, _, rest = spec.partition("=")
        if not label or not rest:
            raise ConfigError(f"--model {spec!r}: LABEL=SPEC needs both parts")
        return label, rest
    path = Path(spec)
    if path.exists():
        return (path.stem if path.is_file() else path.resolve().name), spec
    name, _, pretrained = spec.partition(":")
    return (f"{name}:{Path(pretrained).stem}" if pretrained else name), spec


def load_bench_model(spec: str, label: str | None = None) -> BenchModel:
    """Resolve one `--model` value (see the module docstring); one-line errors for anything else."""
    if label is None:
        label, spec = split_spec(spec)
    path = Path(spec)
    if path.is_dir() and (path / "mmpretrain_config.json").is_file():
        from mmpretrain.engine.export_mmpretrain import load_export
        built = load_export(path).built
        return BenchModel(label, spec, built.model, built.eval_transform, built.tokenizer)
    if path.is_dir() and (path / "open_clip_config.json").is_file():
        clip, _, transform = open_clip.create_model_and_transforms("local-dir:" + str(path.resolve()))
        return BenchModel(label, spec, OpenClipAdapter(clip).eval(), transform,
                          open_clip.get_tokenizer("local-dir:" + str(path.resolve())))
    if path.exists():  # a run directory, its checkpoints folder or a checkpoint file
        return _trained(label, spec)
    return _open_clip_named(label, spec)


def _trained(label: str, spec: str) -> BenchModel:
    from mmpretrain.engine.checkpoint import model_state
    from mmpretrain.engine.export import read_trained, typed_model_config
    from mmpretrain.engine.local import load_model_state
    from mmpretrain.models import build_model

    checkpoint_file, checkpoint, model_section, loss_name = read_trained(Path(spec))
    built = build_model(typed_model_config(model_section), loss_name)
    load_model_state(built.model, model_state(checkpoint))
    log.info("model %s: %s", label, checkpoint_file)
    return BenchModel(label, spec, built.model.eval(), built.eval_transform, built.tokenizer)


def _open_clip_named(label: str, spec: str) -> BenchModel:
    from mmpretrain.models.towers import register_project_configs

    register_project_configs()
    name, _, pretrained = spec.partition(":")
    if name not in open_clip.list_models():
        raise ConfigError(f"--model {spec!r}: not a run directory, an export, nor an open_clip model name "
                          f"(e.g. ViT-B-32:/path/to/weights.pt)")
    if pretrained and not Path(pretrained).is_file() and pretrained not in open_clip.list_pretrained_tags_by_model(
            name):
        raise ConfigError(f"--model {spec!r}: {pretrained} is neither a file nor a pretrained tag of {name}")
    if not pretrained:
        log.warning("model %s: no pretrained weights given, %s is randomly initialised", label, name)
    clip, _, transform = open_clip.create_model_and_transforms(name, pretrained=pretrained or None)
    return BenchModel(label, spec, OpenClipAdapter(clip).eval(), transform, open_clip.get_tokenizer(name))
