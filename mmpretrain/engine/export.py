"""Export a training checkpoint so that the model loads elsewhere: in open_clip's format when open_clip can hold
it (an image and a text tower), else in mmpretrain's own (engine/export_mmpretrain.py: any towers, audio included,
reloaded by `mmpretrain eval OUT` or `load_export`). `export_model` picks the format; this module writes open_clip's.

The open_clip output folder is what open_clip's hf-hub / `local-dir:` loader reads (the same layout
`push_to_hf_hub` writes): `open_clip_config.json` ({"model_cfg", "preprocess_cfg"}) plus
`open_clip_model.safetensors` and/or `open_clip_pytorch_model.bin`. Both of these then load it and give our
embeddings:

    open_clip.create_model_and_transforms("local-dir:" + str(out))
    open_clip.create_model_and_transforms(name, pretrained=str(out / "open_clip_model.safetensors"))

The second needs open_clip to know `name` (for ours: `open_clip.add_model_config("<repo>/configs/models")`) and,
for a model with a sigmoid-loss bias, `init_logit_bias=<any float>` so that open_clip creates the `logit_bias` key.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import open_clip
import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from open_clip.transform import PreprocessCfg, merge_preprocess_dict

from mmpretrain.engine.checkpoint import load_checkpoint, model_state, resolve_resume
from mmpretrain.errors import ConfigError
from mmpretrain.models.towers import ModelConfig, register_project_configs

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = {"safetensors": "open_clip_model.safetensors", "bin": "open_clip_pytorch_model.bin"}

StateDict = dict[str, torch.Tensor]


LAYOUTS = ("open_clip", "mmpretrain")


def export_model(source: Path, out: Path, layout: Optional[str] = None,
                 formats: Optional[tuple[str, ...]] = None, overwrite: bool = False) -> tuple[Path, str]:
    """Export the newest checkpoint of run directory `source` (or checkpoint file `source`) to `out`; returns
    `(out, layout)`.

    `layout`: "open_clip" (this module) or "mmpretrain" (engine/export_mmpretrain.py: every tower, reloaded by
    `mmpretrain eval OUT`). Default: open_clip for a model open_clip can hold (exactly an image and a text tower,
    hence only the image-text pair), else mmpretrain. Asking for open_clip for any other model is a ConfigError
    saying why. `formats` (open_clip only): weight files, some of safetensors / bin (default both).

    Atomic: everything is written into a temp folder beside `out`, checked, then renamed into place, so `out` is
    either absent/old or complete. An existing non-empty `out` is refused unless `overwrite`.
    """
    source, out = Path(source), Path(out)
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {list(LAYOUTS)}, got {layout!r}")
    if formats is not None:
        unknown = set(formats) - set(WEIGHT_NAMES)
        if unknown or not formats:
            raise ValueError(f"formats: expected some of {sorted(WEIGHT_NAMES)}, got {list(formats)}")
    if _is_non_empty(out) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")

    checkpoint_file, checkpoint, model_config, loss_name = read_trained(source)
    reason = open_clip_cannot_hold(model_config, loss_name)
    layout = layout or ("open_clip" if reason is None else "mmpretrain")
    if layout == "open_clip" and reason is not None:
        raise ConfigError(f"{checkpoint_file}: open_clip's format cannot hold this model ({reason}); export it in "
                          f"mmpretrain's format (--format mmpretrain), which `mmpretrain eval OUT_DIR` reloads")
    if layout == "mmpretrain":
        if formats is not None and set(formats) != {"safetensors"}:
            raise ConfigError(f"the mmpretrain format writes safetensors only, not {sorted(set(formats))}")
        from mmpretrain.engine.export_mmpretrain import write_mmpretrain
        write_mmpretrain(checkpoint, checkpoint_file, model_config, loss_name, out)
    else:
        _write_open_clip(checkpoint, checkpoint_file, model_config, out, formats or ("safetensors", "bin"))
    return out, layout


def read_trained(source: Path) -> tuple[Path, dict[str, Any], dict[str, Any], str]:
    """The newest intact checkpoint of a run directory (or a checkpoint file): its path, its contents, the run's
    `model` section and `loss.name` (which decides the pair heads). Export and `mmpretrain benchmark` both start
    here."""
    checkpoint_file = _resolve_checkpoint(Path(source))
    checkpoint = load_checkpoint(checkpoint_file)
    return checkpoint_file, checkpoint, _model_section(checkpoint, checkpoint_file), _loss_name(checkpoint,
                                                                                                checkpoint_file)


def export_open_clip(source: Path, out: Path, formats: tuple[str, ...] = ("safetensors", "bin"),
                     overwrite: bool = False) -> Path:
    """`export_model` in open_clip's format (a ConfigError for a model open_clip cannot hold)."""
    return export_model(source, out, layout="open_clip", formats=formats, overwrite=overwrite)[0]


def open_clip_cannot_hold(model_config: Mapping[str, Any], loss_name: str = "clip") -> Optional[str]:
    """Why open_clip's CLIP/CustomTextCLIP cannot represent the model (None when it can): it has one image and
    one text tower and one head (logit_scale, logit_bias), so nothing but the image-text pair."""
    typed = typed_model_config(model_config)
    if sorted(typed.towers) != ["image", "text"]:
        return f"its towers are {list(typed.towers)}; open_clip holds exactly an image and a text tower"
    keys = [pair.key for pair in typed.resolved_pairs(loss_name)]
    if keys != ["image_text"]:
        return f"its pairs are {keys}; open_clip holds only the image-text pair"
    return None


def typed_model_config(model_config: Mapping[str, Any], where: str = "model") -> ModelConfig:
    """A `model` section (a plain dict from a checkpoint or an export) typed as ModelConfig, defaults filled in;
    not validated (that is build_model's, which also checks that named files exist)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), dict(model_config))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{where}{f'.{key}' if key else ''}: {str(e).splitlines()[0]}") from None


def _write_open_clip(checkpoint: Mapping[str, Any], checkpoint_file: Path, model_config: Mapping[str, Any],
                     out: Path, formats: tuple[str, ...]) -> None:
    model_cfg, preprocess_cfg = _open_clip_config(model_config)

    def fill(tmp: Path) -> None:
        (tmp / CONFIG_NAME).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg},
                                                  indent=2) + "\n")
        # The reference is built from the very config file we ship (no weights in tmp yet), so the key check
        # below proves the exported pair loads under open_clip's strict load.
        reference = open_clip.create_model("local-dir:" + str(tmp)).state_dict()
        state = to_open_clip_state_dict(model_state(checkpoint), custom_text=_is_custom_text(model_cfg))
        _check_matches(state, reference, checkpoint_file)
        _write_weights(state, tmp, formats)
    write_dir_atomically(out, fill)


def write_dir_atomically(out: Path, fill: Callable[[Path], None]) -> None:
    """`fill` a temporary folder beside `out`, then put it in `out`'s place: `out` is either as it was or complete,
    and nothing is left behind when `fill` (or its checks) fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fill(tmp)
        _apply_umask(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def to_open_clip_state_dict(model_state: Mapping[str, torch.Tensor], custom_text: bool) -> StateDict:
    """Rename MultiTower keys to open_clip's: towers.image. -> visual.; towers.text. -> text. (CustomTextCLIP)
    or the top-level text keys of plain CLIP (token_embedding, transformer.*, ln_final.*, ...)."""
    prefixes = {"towers.image.": "visual.", "towers.text.": "text." if custom_text else ""}
    state: StateDict = {}
    for key, value in model_state.items():
        new_key = key
        for old, new in prefixes.items():
            if key.startswith(old):
                new_key = new + key[len(old):]
                break
        if key in ("logit_scale", "logit_bias"):
            value = value.reshape(())  # trained as shape [1] (see models/towers.py); open_clip's are scalars
        state[new_key] = value.detach().cpu().contiguous()
    return state


def _resolve_checkpoint(source: Path) -> Path:
    """A checkpoint file as given, or the newest intact one in a run directory (or its checkpoints/ folder), as
    resume finds it: verified against its manifest, a corrupt newest one skipped with a warning. A DeepSpeed tag
    folder (checkpoints/step-N/) stands for the consolidated step-N.pt that DeepSpeed saves beside it."""
    if not source.exists():
        raise FileNotFoundError(f"export source {source} is neither a run directory nor a checkpoint file")
    found = resolve_resume(source, str(source))
    if found is None:
        raise FileNotFoundError(f"no checkpoints in {source}")
    return found


def _model_section(checkpoint: Mapping[str, Any], checkpoint_file: Path) -> dict[str, Any]:
    """The run config's `model` section: saved in the checkpoint, else the run directory's config.yaml."""
    if "model" not in checkpoint and "engine" not in checkpoint:
        raise KeyError(f"{checkpoint_file}: not a training checkpoint (no 'model' state dict)")
    if "config" in checkpoint:
        return dict(checkpoint["config"]["model"])
    run_yaml, saved = _run_yaml(checkpoint_file)
    # Only the model section is read, typed against ModelConfig (with its defaults): export needs nothing else.
    try:
        model = OmegaConf.merge(OmegaConf.structured(ModelConfig), saved.get("model") or {})
        return dict(OmegaConf.to_container(model))  # type: ignore[arg-type]
    except (OmegaConfBaseException, AttributeError) as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{run_yaml}: {f'model.{key}: ' if key else ''}{str(e).splitlines()[0]}") from None


def _loss_name(checkpoint: Mapping[str, Any], checkpoint_file: Path) -> str:
    """The run's `loss.name`: the pairs' default loss kind, which decides which pair heads (biases) exist."""
    if "config" in checkpoint:
        return str((checkpoint["config"].get("loss") or {}).get("name", "clip"))
    _, saved = _run_yaml(checkpoint_file)
    loss = saved.get("loss") or {}
    return str(loss.get("name", "clip")) if isinstance(loss, dict) else "clip"


def _run_yaml(checkpoint_file: Path) -> tuple[Path, dict[str, Any]]:
    """The run directory's config.yaml (for a checkpoint that holds no config), as a plain dict."""
    run_yaml = checkpoint_file.resolve().parent.parent / "config.yaml"
    if not run_yaml.is_file():
        raise FileNotFoundError(f"{checkpoint_file} holds no config and there is no {run_yaml}")
    try:
        saved = OmegaConf.to_container(OmegaConf.create(yaml.safe_load(run_yaml.read_text(encoding="utf-8")) or {}),
                                       resolve=True)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise ConfigError(f"{run_yaml}: {str(e).splitlines()[0]}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{run_yaml}: not a mapping of config sections")
    return run_yaml, saved


def _open_clip_config(model_config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """open_clip's model_cfg for the run's model (custom_text as in the original) and the preprocessing it
    trained with (`trained_preprocess`)."""
    model_cfg = _named_model_cfg(model_config["name"])
    if model_config.get("init_logit_bias") is not None:
        model_cfg["init_logit_bias"] = float(model_config["init_logit_bias"])  # so open_clip creates the key
    return model_cfg, trained_preprocess(model_config)


def _named_model_cfg(name: str) -> dict[str, Any]:
    register_project_configs()
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise KeyError(f"model {name!r} is not an open_clip config nor one in configs/models")
    return model_cfg


def trained_preprocess(model_config: Mapping[str, Any], size: Any = None) -> dict[str, Any]:
    """The image preprocessing the run trained and evaluated with, as open_clip's factory makes it for a named
    model (BuiltModel.preprocess), without fetching weights: open_clip's defaults, overlaid by the pretrained tag's
    mean/std when it started from one, at the vision tower's image size (`size`: the built tower's, else the
    config's). JSON-ready."""
    name = model_config["name"]
    model_cfg = _named_model_cfg(name)
    tag = model_config.get("pretrained")
    tag_cfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    preprocess = merge_preprocess_dict(asdict(PreprocessCfg()), tag_cfg or {})
    preprocess["size"] = size if size is not None else model_cfg.get("vision_cfg", {}).get("image_size",
                                                                                          preprocess["size"])
    return json.loads(json.dumps(preprocess))  # tuples -> lists, as JSON will hold them


def _is_custom_text(model_cfg: Mapping[str, Any]) -> bool:
    """The same rule open_clip's factory uses to pick CustomTextCLIP (text under `text.`) over CLIP."""
    return bool(model_cfg.get("custom_text", False)) or "hf_model_name" in model_cfg.get("text_cfg", {})


def _check_matches(state: StateDict, reference: StateDict, checkpoint_file: Path) -> None:
    """Fail loudly unless our keys and shapes are exactly those of the open_clip model they will load into."""
    unexpected = sorted(set(state) - set(reference))
    missing = sorted(set(reference) - set(state))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} vs {tuple(reference[k].shape)}"
                    for k in set(state) & set(reference) if state[k].shape != reference[k].shape)
    if unexpected or missing or shapes:
        raise ValueError(f"{checkpoint_file} does not map onto open_clip's model: unexpected keys {unexpected}, "
                         f"missing keys {missing}, shape mismatches {shapes}")


def _write_weights(state: StateDict, directory: Path, formats: tuple[str, ...]) -> None:
    if "safetensors" in formats:
        from safetensors.torch import save_file
        save_file(state, str(directory / WEIGHT_NAMES["safetensors"]))
    if "bin" in formats:
        torch.save(state, directory / WEIGHT_NAMES["bin"])


def _current_umask() -> int:
    """The process umask. It can only be read by setting it: set a strict one for that instant, so a file another
    thread creates meanwhile is at worst more private, never more open."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _apply_umask(directory: Path) -> None:
    """Give the export the modes any other tool's output gets (dirs 0777, files 0666, less the umask): mkdtemp
    makes the folder 0700 and safetensors writes 0600, which would keep the export from the rest of the group."""
    mask = _current_umask()
    directory.chmod(0o777 & ~mask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~mask)


def _is_non_empty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _replace_dir(new: Path, out: Path) -> None:
    """Rename `new` to `out`. An old `out` is first moved aside, so `out` never holds a half-written export."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None and old.is_dir():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()
