"""The blind scorer's maths on a tiny corpus, computed by hand, and the shape of its report."""

from __future__ import annotations

import math

import pytest

from mmpretrain.negatives import Negative
from mmpretrain.negatives.blind import (BOS, EOS, KneserNeyTrigram, blind_accuracy, blind_filter,
                                        cross_fitted_scorers, fold_of)

CORPUS = ["a red square", "a blue square"]


def test_kneser_ney_probabilities_by_hand():
    # Padded: <s> <s> a red square </s> and <s> <s> a blue square </s>.
    # Trigrams (count 1 each except (<s>,<s>,a): 2): (<s>,<s>,a), (<s>,a,red), (a,red,square), (red,square,</s>),
    # (<s>,a,blue), (a,blue,square), (blue,square,</s>).
    # Continuation bigrams: (<s>,a) (a,red) (red,square) (square,</s>) (a,blue) (blue,square): N1+(..) = 6.
    # N1+(.w): a 1, red 1, blue 1, square 2, </s> 1: N1+(.) = 5 words. V = {a, red, blue, square, </s>, <unk>}: 6.
    lm = KneserNeyTrigram(discount=0.5).fit(CORPUS)
    d = 0.5
    p1 = {w: max(n - d, 0) / 6 + d * 5 / 6 / 6 for w, n in {"a": 1, "red": 1, "blue": 1, "square": 2, EOS: 1,
                                                          "<unk>": 0}.items()}
    assert lm._p1("square") == pytest.approx(p1["square"])            # 1.5/6 + 2.5/36
    assert lm._p1("zebra") == lm._p1("<unk>") == pytest.approx(2.5 / 36)
    # P2(red | a): N1+(. a red) = 1, N1+(. a .) = 2 (red, blue after a, each from one left word), N1+(a .) = 2.
    p2_red = (1 - d) / 2 + d * 2 / 2 * p1["red"]
    assert lm._p2("a", "red") == pytest.approx(p2_red)
    # P3(red | <s> a): c(<s> a red) = 1, c(<s> a .) = 2, N1+(<s> a .) = 2.
    assert lm.prob("red", BOS, "a") == pytest.approx((1 - d) / 2 + d * 2 / 2 * p2_red)
    # P3(a | <s> <s>): c = 2 of 2, one follower.
    p2_a = (1 - d) / 1 + d * 1 / 1 * p1["a"]   # N1+(. <s> a) = 1, N1+(. <s> .) = 1, N1+(<s> .) = 1
    assert lm.prob("a", BOS, BOS) == pytest.approx((2 - d) / 2 + d * 1 / 2 * p2_a)
    total, n = lm.logprob("a red square")
    assert n == 4 and lm.score("a red square") == pytest.approx(total / 4)


def test_every_distribution_sums_to_one():
    lm = KneserNeyTrigram().fit(CORPUS + ["the red circle left of a square"])
    for context in [(BOS, BOS), (BOS, "a"), ("a", "red"), ("red", "square"), ("never", "seen"), ("left", "of")]:
        assert sum(lm.prob(w, *context) for w in lm.vocab) == pytest.approx(1.0)


def test_blind_accuracy_and_filter():
    scorer = KneserNeyTrigram().fit(["a red square", "a blue square", "a red circle", "a blue circle"]).score
    pairs = [Negative("square red a", "shuffle", source="a red square"),      # word salad: found out
             Negative("a blue square", "replace_attribute", source="a red square"),  # as plausible as the positive
             Negative("a red square", "copy", source="a red square")]               # a tie
    result = blind_accuracy((n, scorer) for n in pairs)
    assert set(result) == {"shuffle", "replace_attribute", "copy"}
    assert result["shuffle"].accuracy == 1.0 and result["shuffle"].pairs == 1
    assert result["copy"].ties == 1 and result["copy"].accuracy == 0.0
    assert set(result["shuffle"].to_json()) == {"pairs", "blind_accuracy", "ties", "mean_margin"}
    kept, dropped = blind_filter(pairs, scorer, margin=0.5)
    assert [n.type for n in dropped] == ["shuffle"] and len(kept) == 2
    assert blind_filter(pairs, scorer, margin=math.inf)[1] == []


def test_cross_fitting_scores_a_sample_with_a_model_that_never_saw_it():
    samples = [(f"k{i}", [f"caption number {i} unique{i}"]) for i in range(20)]
    scorer_for = cross_fitted_scorers(samples, folds=2)
    for key, (caption,) in samples:
        same_fold = [c for k, (c,) in samples if fold_of(k, 2) == fold_of(key, 2) and k != key]
        other = [c for k, (c,) in samples if fold_of(k, 2) != fold_of(key, 2)]
        expected = KneserNeyTrigram().fit(other).score(caption)
        assert scorer_for(key)(caption) == pytest.approx(expected), (same_fold, other)
