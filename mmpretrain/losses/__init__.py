"""Contrastive losses: pure functions in functional.py, thin modules in modules.py."""

from mmpretrain.losses.modules import ClipLoss, LossConfig, build_loss

__all__ = ["ClipLoss", "LossConfig", "build_loss"]
