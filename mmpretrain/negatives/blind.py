"""A "blind" plausibility check: can text alone tell the positive from the negative? (SugarCrepe's lesson.)

Hsieh et al. (SugarCrepe, 2023) showed that earlier compositionality benchmarks were solvable without the image:
rule-made negatives are often ungrammatical or implausible, and a text-only model prefers the positive. Such a
negative teaches a vision-language model nothing about the image. So each negative type reports its *blind
accuracy*: the fraction of (positive, negative) pairs where a language model trained on the data's own positive
captions scores the positive higher. Near 0.5 is good (the text alone does not give it away); near 1.0 means the
type is trivially wrong. `blind_filter` drops the negatives such a model finds wrong by more than a margin.

The model is an interpolated Kneser-Ney trigram model (Chen & Goodman 1998, fixed discount D) over the
normalised words, written here so it is small, deterministic and has no download. The score of a text is its
*mean log-probability per predicted token* (natural log, the end-of-caption token included), so long and short
captions compare fairly. A stronger scorer (a neural LM) is not built: no registry package ships weights, and
fetching them from a model hub at run time is what this module must not do.

To keep the positive's own counts from flattering it, `cross_fitted_scorers` trains one model per fold of samples
and scores each sample with a model that never saw it.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mmpretrain.negatives.base import Negative
from mmpretrain.negatives.parse import words

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


class KneserNeyTrigram:
    """Interpolated Kneser-Ney, order 3.

    P3(w|u,v) = max(c(uvw) - D, 0) / c(uv.) + D * N1+(uv.) / c(uv.) * P2(w|v)       (P2(w|v) if c(uv.) = 0)
    P2(w|v)   = max(N1+(.vw) - D, 0) / N1+(.v.) + D * N1+(v.) / N1+(.v.) * P1(w)    (P1(w) if N1+(.v.) = 0)
    P1(w)     = max(N1+(.w) - D, 0) / N1+(..) + D * N1+(.) / N1+(..) / |V|
    where c counts trigrams of the padded captions (<s> <s> w1 .. wn </s>), N1+(.vw) the distinct words seen
    before the bigram vw, N1+(v.) the distinct words seen after v in such continuation bigrams, N1+(.w) the
    distinct words seen before w, N1+(..) the number of distinct bigrams, N1+(.) the distinct words with N1+(.w)
    > 0, and V the vocabulary plus </s> and <unk>. Each level sums to one over V.
    """

    def __init__(self, discount: float = 0.75) -> None:
        if not 0 < discount < 1:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        self.discount = discount
        self.trigrams: Counter[tuple[str, str, str]] = Counter()
        self.context3: Counter[tuple[str, str]] = Counter()      # c(uv.)
        self.followers3: Counter[tuple[str, str]] = Counter()    # N1+(uv.)
        self.before2: Counter[tuple[str, str]] = Counter()       # N1+(.vw)
        self.context2: Counter[str] = Counter()                  # N1+(.v.)
        self.followers2: Counter[str] = Counter()                # N1+(v.) among continuation bigrams
        self.before1: Counter[str] = Counter()                   # N1+(.w)
        self.bigram_types = 0                                    # N1+(..)
        self.vocab: set[str] = {EOS, UNK}

    def fit(self, texts: Iterable[str]) -> "KneserNeyTrigram":
        for text in texts:
            tokens = [BOS, BOS, *words(text), EOS]
            self.vocab.update(tokens[2:])
            for i in range(2, len(tokens)):
                self.trigrams[tuple(tokens[i - 2:i + 1])] += 1
        bigrams: set[tuple[str, str]] = set()
        for (u, v, w), count in self.trigrams.items():
            self.context3[(u, v)] += count
            self.followers3[(u, v)] += 1
            self.before2[(v, w)] += 1
            bigrams.add((v, w))
        for v, w in bigrams:
            self.context2[v] += self.before2[(v, w)]
            self.followers2[v] += 1
            self.before1[w] += 1
        self.bigram_types = len(bigrams)
        return self

    def _p1(self, w: str) -> float:
        d, total = self.discount, self.bigram_types
        if total == 0:
            return 1.0 / len(self.vocab)
        return max(self.before1[w] - d, 0) / total + d * len(self.before1) / total / len(self.vocab)

    def _p2(self, v: str, w: str) -> float:
        context = self.context2[v]
        if context == 0:
            return self._p1(w)
        d = self.discount
        return max(self.before2[(v, w)] - d, 0) / context + d * self.followers2[v] / context * self._p1(w)

    def prob(self, w: str, u: str, v: str) -> float:
        """P(w | u v); words outside the vocabulary are read as <unk>."""
        w, u, v = (x if x in self.vocab or x == BOS else UNK for x in (w, u, v))
        context = self.context3[(u, v)]
        if context == 0:
            return self._p2(v, w)
        d = self.discount
        return (max(self.trigrams[(u, v, w)] - d, 0) / context
                + d * self.followers3[(u, v)] / context * self._p2(v, w))

    def logprob(self, text: str) -> tuple[float, int]:
        """Sum of natural-log probabilities of the text's words and </s>, and how many tokens that is."""
        tokens = [BOS, BOS, *words(text), EOS]
        total = sum(math.log(self.prob(tokens[i], tokens[i - 2], tokens[i - 1])) for i in range(2, len(tokens)))
        return total, len(tokens) - 2

    def score(self, text: str) -> float:
        """Mean log-probability per predicted token: the length-normalised plausibility the blind check uses."""
        total, n = self.logprob(text)
        return total / n


Scorer = Callable[[str], float]


def fold_of(key: str, folds: int) -> int:
    """A sample's fold, from a stable hash of its key (the same in every process)."""
    return zlib.crc32(key.encode("utf-8")) % folds


def cross_fitted_scorers(samples: Sequence[tuple[str, Sequence[str]]], folds: int = 2, discount: float = 0.75
                         ) -> Callable[[str], Scorer]:
    """Per sample key, a scorer trained on the positives of the other folds only (with one fold: on everything,
    which flatters the positives). `samples` are (key, positive captions)."""
    if folds < 1:
        raise ValueError(f"folds must be at least 1, got {folds}")
    if folds == 1:
        model = KneserNeyTrigram(discount).fit(c for _, captions in samples for c in captions)
        return lambda key: model.score
    models = [KneserNeyTrigram(discount).fit(c for key, captions in samples if fold_of(key, folds) != f
                                             for c in captions) for f in range(folds)]
    return lambda key: models[fold_of(key, folds)].score


@dataclass
class BlindResult:
    """Per type: pairs scored, pairs where the positive scored higher, ties, and their mean margin."""

    pairs: int = 0
    positive_preferred: int = 0
    ties: int = 0
    margin_sum: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.positive_preferred / self.pairs if self.pairs else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "blind_accuracy": round(self.accuracy, 4) if self.pairs else None,
                "ties": self.ties, "mean_margin": round(self.margin_sum / self.pairs, 4) if self.pairs else None}


def blind_margin(negative: Negative, scorer: Scorer) -> float:
    """score(positive) - score(negative): how much more plausible the text alone finds the positive."""
    return scorer(negative.source) - scorer(negative.text)


def blind_accuracy(pairs: Iterable[tuple[Negative, Scorer]]) -> dict[str, BlindResult]:
    """Per negative type, how often the scorer prefers the positive (`negative.source`) over the negative.
    A tie counts as not preferred (and is reported)."""
    results: dict[str, BlindResult] = defaultdict(BlindResult)
    for negative, scorer in pairs:
        margin = blind_margin(negative, scorer)
        result = results[negative.type]
        result.pairs += 1
        result.positive_preferred += margin > 0
        result.ties += margin == 0
        result.margin_sum += margin
    return dict(results)


def blind_filter(negatives: Iterable[Negative], scorer: Scorer, margin: float
                 ) -> tuple[list[Negative], list[Negative]]:
    """(kept, dropped): a negative is dropped when the positive outscores it by more than `margin` (mean
    log-probability per token, nats): text alone already says it is wrong, so it would teach nothing."""
    kept, dropped = [], []
    for negative in negatives:
        (dropped if blind_margin(negative, scorer) > margin else kept).append(negative)
    return kept, dropped
