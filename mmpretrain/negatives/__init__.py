"""Rule-based hard-negative captions (issue 11): typed, seeded generators and a blind text-only plausibility check.

    from mmpretrain.negatives import generate_negatives
    negatives, report = generate_negatives(["a red square left of a blue circle"], ["swap_attributes"],
                                           per_caption=1, seed=0, key="sample-0")

Modules: lexicon.py (shipped word lists), parse.py (tokenizer, tagger, chunker), base.py (Negative, Skip, the
registry), rules.py (the generators), api.py (generate_negatives and its report), blind.py (n-gram language model,
blind accuracy, filter).
"""

from mmpretrain.negatives.api import NegativeReport, generate_negatives
from mmpretrain.negatives.base import (Generator, Negative, Skip, available_generators, get_generator,
                                       register_generator)

__all__ = ["Generator", "Negative", "NegativeReport", "Skip", "available_generators", "generate_negatives",
           "get_generator", "register_generator"]
