"""Towers (from open_clip) and the multi-tower model."""

from mmpretrain.models.multitower import MultiTower
from mmpretrain.models.towers import BuiltModel, ModelConfig, build_model

__all__ = ["BuiltModel", "ModelConfig", "MultiTower", "build_model"]
