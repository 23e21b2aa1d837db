"""Every negative type on hand-picked captions, with the outputs spelled out."""

from __future__ import annotations

import random

import pytest

from mmpretrain.negatives import Negative, Skip, available_generators, get_generator, register_generator
from mmpretrain.negatives.lexicon import load_lexicon
from mmpretrain.negatives.parse import normalise, parse
from mmpretrain.negatives.rules import Count


def texts(type_: str, caption: str, seed: int = 0) -> set[str]:
    made = get_generator(type_).generate(caption, random.Random(seed))
    assert not isinstance(made, Skip), made
    assert all(isinstance(n, Negative) and n.type == type_ and n.source == caption for n in made)
    return {n.text for n in made}


def every(type_: str, caption: str) -> set[str]:
    """All candidates over many seeds (each call returns at most a few, in a seeded order)."""
    return set().union(*(texts(type_, caption, seed) for seed in range(40)))


def skip(type_: str, caption: str) -> str:
    made = get_generator(type_).generate(caption, random.Random(0))
    assert isinstance(made, Skip), made
    return made.reason


def test_every_listed_type_is_registered():
    assert set(available_generators()) >= {"swap_attributes", "replace_attribute", "replace_object", "swap_relation",
                                           "shuffle", "negate", "partial", "count"}


def test_register_refuses_a_second_generator_of_one_name():
    with pytest.raises(ValueError):
        register_generator("count")(Count)


def test_tagger_reads_phrases_relations_and_digits():
    parsed = parse("A large blue square to the left of two small circles", load_lexicon())
    kinds = [w.kind for w in parsed.words]
    assert kinds == ["det", "size", "colour", "noun", "relation", "relation", "relation", "relation", "number",
                     "size", "noun"]
    assert [(p.start, p.end, p.det, p.count) for p in parsed.phrases] == [(0, 4, 0, None), (8, 11, None, 8)]
    assert parsed.words[10].plural and parsed.words[10].lemma == "circle"
    assert len(parsed.triples) == 1 and parsed.relations[0].relation.counterpart == "to the right of"
    seven = parse("a handwritten seven", load_lexicon()).words[2]
    assert (seven.kind, seven.category) == ("noun", "digits")


def test_swap_attributes():
    assert texts("swap_attributes", "the red square and the blue circle") == {"the blue square and the red circle"}
    assert every("swap_attributes", "a large blue square left of a small green triangle") == {
        "a small blue square left of a large green triangle", "a large green square left of a small blue triangle"}
    # Swapped, "a red square and a blue square" names the same two things: no negative.
    assert skip("swap_attributes", "a red square and a blue square") == "no two noun phrases differ in one attribute kind"
    # ...unless a relation orders them.
    assert texts("swap_attributes", "a red square left of a blue square") == {"a blue square left of a red square"}
    assert skip("swap_attributes", "a red square") == "fewer than two noun phrases with attributes"


def test_replace_attribute_takes_another_synonym_group():
    out = every("replace_attribute", "a small wooden chair")
    assert "a large wooden chair" in out and "a small glass chair" in out and "a small metal chair" in out
    assert not any(word in text for text in out for word in ("tiny", "little"))  # synonyms of small: still true
    assert "an orange square" in every("replace_attribute", "a red square")  # the article agrees
    assert skip("replace_attribute", "a dog on a bed") == "no colour / size / material word"


def test_replace_object_within_its_category_keeping_number():
    out = every("replace_object", "two dogs on a bed")
    assert "two cats on a bed" in out and "two mice on a bed" in out and "two dogs on a chair" in out
    assert not any("circle" in t or "car" in t for t in out)
    assert "a handwritten three" in every("replace_object", "a handwritten seven")
    assert every("replace_object", "the number 7") == {f"the number {d}" for d in "012345689"}
    assert "an eight written by hand" in every("replace_object", "a seven written by hand")
    assert skip("replace_object", "a large red shape") == "only generic nouns"


def test_swap_relation_swaps_arguments_or_takes_the_counterpart():
    assert every("swap_relation", "a red square left of a blue circle") == {
        "a blue circle left of a red square", "a red square right of a blue circle"}
    assert every("swap_relation", "A cat on a table") == {"A table on a cat", "A cat under a table"}
    assert "the dog after the cat" in every("swap_relation", "the dog before the cat")
    assert skip("swap_relation", "a dog next to a cat") == "only symmetric relations"
    assert skip("swap_relation", "a red square") == "no relation between two noun phrases"


def test_shuffle_modes():
    made = get_generator("shuffle").generate("a large blue square left of a small green triangle", random.Random(0))
    assert isinstance(made, list)
    by_mode = {n.detail["mode"]: n.text for n in made}
    assert set(by_mode) == {"nouns", "adjectives", "trigrams", "within_trigrams"}
    assert by_mode["nouns"] == "a large blue triangle left of a small green square"
    for text in by_mode.values():  # a permutation of the same words
        assert sorted(normalise(text).split()) == sorted("a large blue square left of a small green triangle".split())
    assert skip("shuffle", "a dog") == "too few nouns, adjectives or words to shuffle"


def test_negate():
    assert every("negate", "a red square") == {"no red square", "a square that is not red"}
    assert every("negate", "two circles next to a dog") == {"no circles next to a dog", "two circles next to no dog"}
    assert "three apples that are not red in a bowl" in every("negate", "three red apples in a bowl")
    assert skip("negate", "there is no red square") == "already negated"


def test_count_changes_number_words_with_agreement():
    out = every("count", "two circles")
    assert "three circles" in out and "one circle" in out and "ten circles" in out and "two circles" not in out
    assert "two dogs" in every("count", "one dog")
    assert "5 cats" in every("count", "3 cats")
    assert skip("count", "a dog") == "no number word counting a noun"
    articles = Count(articles=True).generate("a dog", random.Random(0))
    assert isinstance(articles, list) and all(n.text.endswith("dogs") for n in articles)


def test_partial_makes_one_clause_wrong_and_never_truncates():
    caption = "a red square left of a blue circle, and a green triangle"
    out = every("partial", caption)
    assert "a red square left of a blue circle, and a yellow triangle" in out
    assert "a red square right of a blue circle, and a green triangle" in out
    clauses = [c.strip() for c in caption.replace(", and", ",").split(",")]
    for text in out:
        new = [c.strip() for c in text.replace(", and", ",").split(",")]
        assert len(new) == len(clauses)  # nothing dropped: a shorter true caption is no negative
        assert sum(a != b for a, b in zip(new, clauses)) == 1
    assert skip("partial", "a red square left of a blue circle") == "a single clause"


def test_capitals_and_punctuation_are_kept():
    assert "A Blue Square." in every("replace_attribute", "A Red Square.")
    assert "A BLUE SQUARE LEFT OF A RED CIRCLE!" in every("swap_attributes", "A RED SQUARE LEFT OF A BLUE CIRCLE!")
    assert "The blue circle left of the red square." in every("swap_relation", "The red square left of the blue circle.")
