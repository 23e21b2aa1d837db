"""Data curation on Ray: filter, balance, de-duplicate and decontaminate shard sets (`mmpretrain curate`).

Importing the package registers the stages; docs/CURATION.md is the user's guide, docs/ARCHITECTURE.md the design.
"""

from mmpretrain.curate import balance, dedup, negatives_stage, stages  # noqa: F401  (registers the stages)
from mmpretrain.curate.stages import STAGES, Stage, StageResult, register_stage

__all__ = ["STAGES", "Stage", "StageResult", "register_stage"]
