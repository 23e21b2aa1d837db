"""The AST-style audio tower: timm ViT over log-mel patches, its configs, and loading local pretrained weights."""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from mmpretrain.errors import ConfigError
from mmpretrain.models import AudioEncoder, build_audio_encoder, known_audio_encoders
from mmpretrain.models.towers import known_model_names
from mmpretrain.paths import configs_dir


def tiny(seed: int = 0) -> AudioEncoder:
    torch.manual_seed(seed)
    return build_audio_encoder("mmp-ast-tiny").eval()


def test_configs_are_known_audio_encoders_and_invisible_to_open_clip():
    assert {"mmp-ast-tiny", "mmp-ast-base"} <= set(known_audio_encoders())
    names = known_model_names()  # registers configs/models with open_clip, then lists
    assert "mmp-tiny-vit" in names and "mmp-tiny-vit" not in known_audio_encoders()
    assert not {"mmp-ast-tiny", "mmp-ast-base"} & set(names)
    open_clip.add_model_config(configs_dir() / "models")  # a rescan does not trip on the audio JSONs either
    assert not {"mmp-ast-tiny", "mmp-ast-base"} & set(open_clip.list_models())


def test_forward_shape_and_time_axis():
    enc = tiny()
    a = enc.config.audio_cfg
    assert (a.n_mels, a.frames) == (64, 101) and enc.trunk.patch_embed.grid_size == (5, 9)  # AST's stride 10
    x = torch.randn(8, 64, 101)
    with torch.no_grad():
        y = enc(x)
        assert y.shape == (8, enc.config.embed_dim) and y.dtype == torch.float32
        # Shorter inputs are padded at the end with pad_value; longer ones keep their first `frames` frames.
        short = x[..., :60]
        padded = torch.cat([short, torch.full((8, 64, 41), a.pad_value)], dim=-1)
        assert torch.equal(enc(short), enc(padded))
        assert torch.equal(enc(torch.cat([x, torch.randn(8, 64, 50)], dim=-1)), y)
    with pytest.raises(ConfigError, match="n_mels"):
        enc(torch.randn(2, 80, 101))


def test_gradient_reaches_every_parameter():
    enc = tiny().train()
    enc(torch.randn(4, 64, 101)).pow(2).sum().backward()
    no_grad = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


def test_deterministic_and_checkpointing_passes_through():
    x = torch.randn(3, 64, 101)
    a, b = tiny(seed=1), tiny(seed=1)
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and torch.equal(a(x), a(x))
    a.set_grad_checkpointing(True)
    assert a.trunk.grad_checkpointing
    a.train()
    a(x).sum().backward()  # a checkpointed backward works


def test_base_config_is_ast_base_sized():
    with torch.device("meta"):
        enc = build_audio_encoder("mmp-ast-base")
    assert enc.trunk.patch_embed.grid_size == (12, 101)  # AST: 128 mels x 1024 frames, patch 16, stride 10
    trunk = sum(p.numel() for p in enc.trunk.parameters())
    assert 85.5e6 < trunk < 87e6  # ViT-B/16 (~85.8M) with AST's 1212-patch positional embedding
    assert sum(p.numel() for p in enc.proj.parameters()) == 768 * 512


def test_unknown_name_is_one_line_listing_known():
    with pytest.raises(ConfigError) as e:
        build_audio_encoder("mmp-ast-nope")
    assert "mmp-ast-tiny" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        build_audio_encoder("mmp-tiny-vit")  # an image/text config is not an audio one


def test_bad_audio_cfg_names_the_key(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text('{"embed_dim": 8, "audio_cfg": {"n_mels": 32, "frames": 50, "widht": 8}}')
    with pytest.raises(ConfigError, match="widht"):
        build_audio_encoder(str(path))
    path.write_text('{"embed_dim": 8, "audio_cfg": {"n_mels": 32, "frames": 50, "patch_stride": 20, '
                    '"width": 8, "depth": 1, "heads": 2}}')
    with pytest.raises(ConfigError, match="patch_stride"):
        build_audio_encoder(str(path))


def image_vit(seed: int = 2) -> VisionTransformer:
    """A 3-channel image ViT of the tiny encoder's width on another grid (4x4 patches of 16)."""
    torch.manual_seed(seed)
    return VisionTransformer(img_size=64, patch_size=16, in_chans=3, num_classes=10, embed_dim=128, depth=2,
                             num_heads=4, mlp_ratio=2.0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_loads_an_image_vit(tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture):
    source = image_vit().state_dict()
    path = tmp_path / f"vit{suffix}"
    save_file(source, str(path)) if suffix == ".safetensors" else torch.save(source, path)
    with caplog.at_level(logging.INFO, logger="mmpretrain.models.audio_tower"):
        enc = tiny()
        before = enc.proj.weight.clone()
        enc.load_pretrained(str(path))
    loaded = enc.trunk.state_dict()
    for key, value in source.items():
        if key.startswith(("blocks.", "norm.")) or key == "cls_token":
            assert torch.equal(loaded[key], value), key
    # AST's adaptation of an image ViT: the patch embedding summed over RGB, the positional grid resampled.
    assert torch.equal(loaded["patch_embed.proj.weight"], source["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert source["pos_embed"].shape == (1, 17, 128) and loaded["pos_embed"].shape == (1, 46, 128)
    assert torch.equal(loaded["pos_embed"][:, 0], source["pos_embed"][:, 0])  # the class token's position
    assert torch.equal(enc.proj.weight, before)  # an image ViT has no projection of ours
    lines = [r.getMessage() for r in caplog.records if "loaded" in r.getMessage()]
    assert len(lines) == 1 and "proj.weight" in lines[0] and "head.weight" in lines[0]  # missing, unexpected
    with torch.no_grad():
        assert torch.isfinite(enc(torch.randn(2, 64, 101))).all()


def test_round_trip_of_our_encoder_and_an_ast_layout(tmp_path: Path):
    source = tiny(seed=3)
    save_file(source.state_dict(), str(tmp_path / "ours.safetensors"))
    loaded = build_audio_encoder("mmp-ast-tiny", pretrained=str(tmp_path / "ours.safetensors")).eval()
    x = torch.randn(2, 64, 101)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    # Inside a multi-tower checkpoint beside a timm image tower: the audio one is picked, projection included.
    towers = {f"towers.audio.{k}": v for k, v in source.state_dict().items()}
    towers.update({f"towers.image.trunk.{k}": v for k, v in image_vit().state_dict().items()})
    torch.save({"model": towers, "step": 10}, tmp_path / "multitower.pt")
    loaded = build_audio_encoder("mmp-ast-tiny", pretrained=str(tmp_path / "multitower.pt")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    # AST's checkpoints: DataParallel's "module." + ASTModel's "v." around a DeiT with a distillation token.
    trunk = {f"module.v.{k}": v for k, v in source.trunk.state_dict().items()}
    pos = trunk["module.v.pos_embed"]
    trunk["module.v.pos_embed"] = torch.cat([pos[:, :1], torch.randn(1, 1, 128), pos[:, 1:]], dim=1)
    trunk["module.v.dist_token"] = torch.randn(1, 1, 128)
    torch.save({"state_dict": trunk, "epoch": 3}, tmp_path / "ast.pth")
    enc = tiny(seed=4)
    enc.load_pretrained(tmp_path / "ast.pth")
    assert all(torch.equal(enc.trunk.state_dict()[k], v) for k, v in source.trunk.state_dict().items())


class _Planted:
    """Unpickling this creates the file `marker`: a .pt that runs code when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickled_code_does_not_run(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"blocks.0.norm1.weight": torch.ones(128), "payload": _Planted(marker)}, path)
    with pytest.raises(ConfigError) as e:
        tiny().load_pretrained(path)
    assert not marker.exists()
    message = str(e.value)
    assert "evil.pt" in message and "Unsupported global" in message and "\n" not in message
    torch.load(path, weights_only=False)  # the plant is live: a plain load runs it
    assert marker.exists()


def test_unusable_files_are_one_line_errors(tmp_path: Path):
    cases = {"garbage.safetensors": b"not a safetensors file", "garbage.bin": b"\x00\x01 nope"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    wide = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=2).state_dict()
    save_file(wide, str(tmp_path / "wide.safetensors"))
    for name in [*cases, "other.safetensors", "wide.safetensors", "absent.pt"]:
        with pytest.raises(ConfigError) as e:
            tiny().load_pretrained(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value), str(e.value)
