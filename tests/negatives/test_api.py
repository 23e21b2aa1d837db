"""generate_negatives: never a copy of a positive, deterministic per (seed, key), not-applicable counted."""

from __future__ import annotations

import random

from mmpretrain.data.demo_data import DIGIT_TEMPLATES, digit_caption, sample_scene, scene_caption
from mmpretrain.negatives import NegativeReport, Skip, available_generators, generate_negatives
from mmpretrain.negatives.parse import normalise


def demo_samples(n_scenes: int = 1200, n_digits: int = 300) -> list[list[str]]:
    rng = random.Random(7)
    samples = []
    for i in range(n_scenes):
        objects = sample_scene(rng, 1 + i % 3)
        samples.append([scene_caption(objects, rng, canonical=i % 4 == 0) for _ in range(3)])
    for i in range(n_digits):
        samples.append([digit_caption(i % 10, t) for t in rng.sample(DIGIT_TEMPLATES, 3)])
    return samples


def test_never_emits_a_copy_of_a_positive_over_thousands_of_captions():
    types = available_generators()
    total = NegativeReport()
    for n, captions in enumerate(demo_samples()):
        negatives, report = generate_negatives(captions, types, per_caption=2, seed=0, key=f"s{n}")
        total.merge(report)
        positives = {normalise(c) for c in captions}
        texts = [normalise(neg.text) for neg in negatives]
        assert not positives & set(texts), captions
        assert len(texts) == len(set(texts))
        assert all(neg.type in types and neg.source in captions for neg in negatives)
    assert total.samples == 1500
    for type_ in types:
        counts = total.types[type_]
        assert counts.captions == 4500
        assert counts.applied + counts.not_applicable == counts.captions
        assert sum(counts.reasons.values()) == counts.not_applicable
        assert counts.applied <= counts.emitted <= 2 * counts.applied
    # Types that the shapes captions allow are made for most of them; count finds no number words there.
    assert total.types["replace_attribute"].applied > 3000 and total.types["swap_relation"].applied > 1500
    assert total.types["count"].emitted == 0
    assert total.types["count"].reasons == {"no number word counting a noun": 4500}


def test_deterministic_per_seed_and_key():
    captions = ["a large blue square left of a small green triangle", "a photo of a blue square"]
    types = ["replace_attribute", "shuffle", "negate"]
    first = generate_negatives(captions, types, 2, seed=3, key="k")[0]
    assert first == generate_negatives(captions, types, 2, seed=3, key="k")[0]
    assert first != generate_negatives(captions, types, 2, seed=4, key="k")[0]
    assert first != generate_negatives(captions, types, 2, seed=3, key="other")[0]
    # A type's negatives do not depend on which other types were asked for.
    alone = generate_negatives(captions, ["shuffle"], 2, seed=3, key="k")[0]
    assert alone == [n for n in first if n.type == "shuffle"]


class _Copier:
    """A faulty generator that returns a positive: the API must drop it and count the caption."""

    name = "copier"

    def generate(self, caption, rng):
        return [__import__("mmpretrain.negatives", fromlist=["Negative"]).Negative(caption.upper() + "!", "copier")]


class _Never:
    name = "never"

    def generate(self, caption, rng):
        return Skip("does not apply")


def test_copies_and_skips_are_counted():
    captions = ["a red square", "a blue circle"]
    negatives, report = generate_negatives(captions, ["copier", "never"], 1, 0, "k",
                                           generators={"copier": _Copier(), "never": _Never()})
    assert negatives == []
    copier, never = report.types["copier"], report.types["never"]
    assert (copier.equal_to_positive, copier.not_applicable, copier.emitted) == (2, 2, 0)
    assert never.reasons == {"does not apply": 2} and never.not_applicable == 2
    assert report.to_json()["types"]["never"]["not_applicable"] == 2


def test_many_per_caption():
    captions = ["a large blue square left of a small green triangle"]
    negatives, report = generate_negatives(captions, ["replace_attribute"], 10, seed=0, key="k")
    assert len(negatives) == 10 and report.types["replace_attribute"].emitted == 10
    fewer, _ = generate_negatives(captions, ["replace_attribute"], 3, seed=0, key="k")
    assert len(fewer) == 3


def test_vocabulary_limits_replacements_to_the_datas_words():
    from mmpretrain.negatives.api import caption_vocabulary

    corpus = ["a red square", "a blue circle", "a green triangle"]
    vocabulary = caption_vocabulary(corpus)
    negatives, report = generate_negatives(["a red square"], ["replace_attribute", "replace_object", "partial"], 10,
                                           seed=0, key="k", vocabulary=vocabulary)
    assert {n.text for n in negatives} == {"a blue square", "a green square", "a red circle", "a red triangle"}
    assert report.types["partial"].reasons == {"a single clause": 1}
