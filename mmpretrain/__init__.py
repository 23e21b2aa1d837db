"""mmpretrain: multimodal contrastive pretraining (CLIP, SigLIP, CLAP-style) on WebDataset shards."""

__version__ = "0.1.0"
