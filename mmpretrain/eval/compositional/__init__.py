"""Compositional evaluation: does the image prefer its caption over a minimally changed wrong one?

data.py holds a read set, readers.py reads the published formats (SugarCrepe, ARO, Winoground) and our shard
layout, shuffles.py makes ARO's word-order negatives, scoring.py scores (per type, beside a blind scorer), and
evaluate.py embeds and scores a set for the harness's ``kind: compositional`` tasks.
"""

from mmpretrain.eval.compositional.evaluate import evaluate
from mmpretrain.eval.compositional.readers import FORMATS, SUGARCREPE_SUBSETS, read_compositional
from mmpretrain.eval.compositional.scoring import BlindScorer

__all__ = ["FORMATS", "SUGARCREPE_SUBSETS", "BlindScorer", "evaluate", "read_compositional"]
