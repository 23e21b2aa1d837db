"""mmpretrain's own export format, for models open_clip cannot hold (an audio tower, three towers, no image tower),
or any model with `mmpretrain export --format mmpretrain`; and its loader (`mmpretrain eval EXPORT_DIR`).

An export folder holds:

    mmpretrain_model.safetensors  the whole MultiTower state dict, keys as in training: towers.<tower>.*,
                                  logit_scale / logit_bias (the image-text pair's head), pair_scales.<a>_<b>,
                                  pair_biases.<a>_<b>
    mmpretrain_config.json        {"format": 1, "model": <the run's model section>, "loss_name": <loss.name>,
                                   "preprocess": <BuiltModel.preprocess>, "source": {"checkpoint", "step"},
                                   "weights": {"file", "bytes", "sha256"}}

`model.pretrained` and `model.audio.pretrained` are null in the exported model section: they named the weights the
run started from (a tag to download, a file path, often relative to where training ran), and the trained weights
are in the safetensors, so reloading needs neither. The towers are still named by config (`model.name`,
`model.audio.encoder`): open_clip's built-in configs and the JSONs in configs/models/ must know them where the
export is loaded. `loss_name` is kept because it decides which pair heads (biases) the model has; `preprocess` is
the image preprocessing the run used (with a pretrained tag's mean/std), since the model rebuilt without the tag
would otherwise get open_clip's defaults.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

from mmpretrain.engine.checkpoint import file_digest, model_state
from mmpretrain.engine.export import trained_preprocess, typed_model_config, write_dir_atomically
from mmpretrain.errors import ConfigError
from mmpretrain.models.towers import BuiltModel, build_model

FORMAT = 1
CONFIG_NAME = "mmpretrain_config.json"
WEIGHTS_NAME = "mmpretrain_model.safetensors"


def is_export_dir(path: Path) -> bool:
    """A folder written by `mmpretrain export` in mmpretrain's format (it holds mmpretrain_config.json)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file()


def portable_model_section(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The model section as exported: typed (defaults filled in), with the starting-weights paths nulled."""
    from omegaconf import OmegaConf

    typed = typed_model_config(model_config)
    typed.pretrained = None
    typed.audio.pretrained = None
    return OmegaConf.to_container(OmegaConf.structured(typed))  # type: ignore[return-value]


def write_mmpretrain(checkpoint: Mapping[str, Any], checkpoint_file: Path, model_config: Mapping[str, Any],
                     loss_name: str, out: Path) -> None:
    """Write `checkpoint`'s model to `out` (atomically: a temp folder beside it, checked, then renamed), checked by
    reloading it exactly as `load_export` will: rebuilt from the JSON, weights loaded strictly, every tensor equal
    to the checkpoint's model's."""
    from safetensors.torch import save_file

    state = _plain_state(model_state(checkpoint))
    portable = portable_model_section(model_config)
    # The checkpoint's model, as its config builds it: a checkpoint whose keys do not fit fails here, before any
    # file is written, and the export is checked against this model once reloaded.
    built = build_model(typed_model_config(portable), loss_name)
    _load_strictly(built, state, str(checkpoint_file))
    source = built.model.state_dict()
    config = {
        "format": FORMAT,
        "model": portable,
        "loss_name": loss_name,
        "preprocess": trained_preprocess(model_config, size=built.preprocess.get("size")),
        "source": {"checkpoint": str(Path(checkpoint_file).resolve()), "step": checkpoint.get("step")},
    }

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        digest = file_digest(tmp / WEIGHTS_NAME)
        config["weights"] = {"file": WEIGHTS_NAME, "bytes": digest["size"], "sha256": digest["sha256"]}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        reloaded = load_export(tmp).built.model.state_dict()
        differing = [key for key, value in source.items() if not torch.equal(value, reloaded[key])]
        if differing:
            raise ValueError(f"{checkpoint_file}: the reloaded export differs from the checkpoint in {differing[:3]}")
    write_dir_atomically(out, fill)


@dataclass
class LoadedExport:
    """A reloaded export: the model (eval mode, on the CPU) with its eval transform and tokenizer, and the JSON."""

    built: BuiltModel
    config: dict[str, Any]


def read_export_config(directory: Path) -> dict[str, Any]:
    """The export's mmpretrain_config.json, checked for the keys the loader needs."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an mmpretrain export (no {CONFIG_NAME})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise ConfigError(f"{path}: format {found!r}, this version of mmpretrain reads format {FORMAT}")
    missing = [key for key in ("model", "loss_name", "preprocess") if key not in config]
    if missing:
        raise ConfigError(f"{path}: no {', '.join(missing)} (a damaged export: export again)")
    return config


def load_export(directory: Path) -> LoadedExport:
    """Rebuild the model an export describes and load its weights strictly (one-line errors: a missing, truncated
    or altered weights file, keys that do not fit the model)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_export_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing, the export is incomplete (export it again)")
    expected = config.get("weights") or {}
    if "bytes" in expected and weights.stat().st_size != expected["bytes"]:
        raise ConfigError(f"{weights}: {weights.stat().st_size} bytes, the export wrote {expected['bytes']}: "
                          f"truncated or replaced (export it again)")
    if "sha256" in expected and file_digest(weights)["sha256"] != expected["sha256"]:
        raise ConfigError(f"{weights}: its sha256 is not the one the export recorded: corrupt or replaced "
                          f"(export it again)")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors' own error type (SafetensorError) is not importable by a stable name
        raise ConfigError(f"{weights}: cannot be read as safetensors ({str(e).splitlines()[0] or type(e).__name__})"
                          ) from None
    built = _rebuild(config, state, str(weights), where=f"{directory / CONFIG_NAME}: model")
    return LoadedExport(built, config)


def _plain_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that share no memory (safetensors refuses shared storage, e.g. tied weights)."""
    plain: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        plain[key] = tensor
    return plain


def _rebuild(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], what: str, where: str) -> BuiltModel:
    """The model an export config describes with `state` loaded strictly, in eval mode, its eval transform made
    from the recorded preprocessing."""
    built = build_model(typed_model_config(config["model"], where=where), config["loss_name"])
    _load_strictly(built, state, what)
    preprocess = dict(config["preprocess"])
    built.preprocess = preprocess
    built.eval_transform = image_transform_v2(PreprocessCfg(**preprocess), is_train=False)
    if "image" in built.model.towers:  # as open_clip's factory sets it (open_clip.get_model_preprocess_cfg)
        built.model.towers["image"].preprocess_cfg = copy.deepcopy(preprocess)
    return built


def _load_strictly(built: BuiltModel, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load `state` into the built model, all keys and shapes exact, else a one-line ConfigError naming `what`."""
    expected = built.model.state_dict()
    unexpected, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                    for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if unexpected or missing or shapes:
        raise ConfigError(f"{what} does not fit the model its config builds: unexpected keys {unexpected[:5]}"
                          f"{' ...' if len(unexpected) > 5 else ''}, missing keys {missing[:5]}"
                          f"{' ...' if len(missing) > 5 else ''}, shape mismatches {shapes[:5]}")
    built.model.load_state_dict(state, strict=True)
    built.model.eval()
