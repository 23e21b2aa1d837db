"""Contrastive losses: pure math in functional.py, blockwise kernels in blockwise.py, collectives in
distributed.py, thin modules in modules.py."""

from mmpretrain.losses.modules import ClipLoss, LossConfig, SigLipLoss, build_loss

__all__ = ["ClipLoss", "LossConfig", "SigLipLoss", "build_loss"]
