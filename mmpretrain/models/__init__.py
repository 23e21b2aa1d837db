"""Towers (from open_clip, and an AST-style audio tower from timm) and the multi-tower model."""

from mmpretrain.models.audio_tower import (AudioCfg, AudioEncoder, AudioEncoderConfig, build_audio_encoder,
                                          known_audio_encoders)
from mmpretrain.models.multitower import MultiTower
from mmpretrain.models.towers import BuiltModel, ModelConfig, build_model

__all__ = ["AudioCfg", "AudioEncoder", "AudioEncoderConfig", "BuiltModel", "ModelConfig", "MultiTower",
           "build_audio_encoder", "build_model", "known_audio_encoders"]
