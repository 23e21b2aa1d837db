"""Which modality pairs a multi-tower model aligns, and how each pair is scored.

`model.pairs` lists them: `{between: [audio, text]}` is one pair; `"*"` stands for every tower, so
`{between: ["*", text]}` binds every other tower to text (ImageBind's anchor) and `{between: ["*", "*"]}` is all
pairs. Each pair has its own loss kind (softmax `clip` or sigmoid `siglip`; default `loss.name`), its own learnable
temperature (and bias, for sigmoid) and a weight in the sum of pair losses. Empty: every pair of the model's
towers (for the two-tower image-text model, the one CLIP pair).

A pair is kept in a fixed order: text second when it is in the pair (its `[B, P, D]` positives and hard negatives
are the loss's columns), else the order of `model.towers`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Optional

from mmpretrain.errors import ConfigError

LOSS_KINDS = ("clip", "siglip")
ANY = "*"
IMAGE_TEXT = ("image", "text")  # the pair whose head is open_clip's logit_scale / logit_bias (exports keep it)


@dataclass
class PairConfig:
    """One entry of `model.pairs`."""

    between: list[str] = field(default_factory=list)  # two tower names, or "*" for every tower
    loss: Optional[str] = None                         # clip | siglip; None: loss.name
    weight: float = 1.0                                # its share of the summed loss
    init_logit_scale: Optional[float] = None           # log of the initial scale; None: per loss kind (below)
    init_logit_bias: Optional[float] = None            # sigmoid only; None: -10 (SigLIP's)


@dataclass(frozen=True)
class Pair:
    """A resolved pair: the rows' modality, the columns' modality, and how it is scored."""

    first: str
    second: str
    loss: str
    weight: float
    init_logit_scale: float
    init_logit_bias: Optional[float]  # None: no bias (softmax is invariant to one)

    @property
    def key(self) -> str:
        """Its name in parameter dicts and metric names: `audio_text`."""
        return f"{self.first}_{self.second}"


def default_init_scale(loss: str) -> float:
    """CLIP starts at 1/0.07 (open_clip's default); SigLIP at 10 with bias -10 (the SigLIP paper's)."""
    return math.log(1 / 0.07) if loss == "clip" else math.log(10.0)


def _ordered(a: str, b: str, towers: list[str]) -> tuple[str, str]:
    if a == "text" or (b != "text" and towers.index(a) > towers.index(b)):
        return b, a
    return a, b


def resolve_pairs(configs: list[PairConfig], towers: list[str], default_loss: str) -> list[Pair]:
    """The concrete pairs of `configs` over `towers`, each once, ordered by `towers`. A pair named explicitly
    wins over a wildcard entry that also covers it; naming one pair explicitly twice is an error (two weights for
    one pair would be ambiguous)."""
    configs = configs or [PairConfig(between=[ANY, ANY])]
    pairs: dict[tuple[str, str], Pair] = {}
    explicit_first = sorted(enumerate(configs), key=lambda item: ANY in item[1].between)
    for index, config in explicit_first:
        where = f"model.pairs[{index}]"
        if len(config.between) != 2:
            raise ConfigError(f"{where}.between: name two towers (or '*'), got {list(config.between)}")
        for name in config.between:
            if name != ANY and name not in towers:
                raise ConfigError(f"{where}.between: {name!r} is not one of model.towers {towers}")
        loss = config.loss or default_loss
        if loss not in LOSS_KINDS:
            raise ConfigError(f"{where}.loss: {loss!r} is not one of {list(LOSS_KINDS)}")
        if not config.weight > 0:
            raise ConfigError(f"{where}.weight: must be > 0, got {config.weight}")
        if config.init_logit_bias is not None and loss != "siglip":
            raise ConfigError(f"{where}.init_logit_bias: only a sigmoid pair (loss: siglip) has a bias")
        if IMAGE_TEXT == tuple(config.between) or IMAGE_TEXT == tuple(reversed(config.between)):
            if config.init_logit_scale is not None or config.init_logit_bias is not None:
                raise ConfigError(f"{where}: the image-text pair's temperature and bias are open_clip's: set "
                                  "model.init_logit_scale / model.init_logit_bias")
        left = towers if config.between[0] == ANY else [config.between[0]]
        right = towers if config.between[1] == ANY else [config.between[1]]
        matched = {_ordered(a, b, towers) for a, b in itertools.product(left, right) if a != b}
        if not matched:
            raise ConfigError(f"{where}.between: {list(config.between)} names no pair of two different towers")
        for first, second in sorted(matched, key=lambda p: (towers.index(p[0]), towers.index(p[1]))):
            if (first, second) in pairs:
                if ANY in config.between:
                    continue  # a wildcard does not override a pair named before it
                raise ConfigError(f"{where}: the pair {first}-{second} is already configured")
            scale = config.init_logit_scale
            bias = config.init_logit_bias if loss == "siglip" else None
            pairs[(first, second)] = Pair(first, second, loss, float(config.weight),
                                          default_init_scale(loss) if scale is None else float(scale),
                                          (-10.0 if bias is None else float(bias)) if loss == "siglip" else None)
    return [pairs[key] for key in sorted(pairs, key=lambda p: (towers.index(p[0]), towers.index(p[1])))]
