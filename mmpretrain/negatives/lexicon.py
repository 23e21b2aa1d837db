"""The word lists the generators tag captions with, shipped as package data (mmpretrain/negatives/lexicon/*.json).

Nothing is downloaded at run time: every list is hand-written in this repository (each file's "source" says so
and what was chosen). Attribute lists are groups of synonyms, so a replacement is always taken from another
group ("small" never becomes "tiny", which would be a true caption). Object nouns are grouped by category and
replaced only within theirs, and no category holds a hypernym or synonym of another member.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

ATTRIBUTE_KINDS = ("colour", "size", "material")
_ATTRIBUTE_FILES = {"colour": "colours.json", "size": "sizes.json", "material": "materials.json"}
DIGITS = "digits"  # the category of number words used as nouns ("a handwritten seven", "the number 7")


@dataclass(frozen=True)
class Relation:
    """One relation phrase and its counterpart (see relations.json): `kind` is converse, opposite or symmetric."""

    phrase: str
    counterpart: str | None
    kind: str


@dataclass(frozen=True)
class Lexicon:
    """Lookup tables built once from the JSON files."""

    groups: dict[str, list[list[str]]]          # attribute kind -> synonym groups (first word: canonical)
    attribute_of: dict[str, tuple[str, int]]    # word -> (kind, group index)
    numbers: dict[str, int]                     # number word -> value
    number_words: dict[int, str]                # value -> number word
    digit_words: list[str]                      # zero..nine, the digits category
    categories: dict[str, list[str]]            # object category -> singular nouns
    noun_of: dict[str, tuple[str, str, bool]]   # surface form -> (singular, category, is plural)
    plurals: dict[str, str]                     # singular -> plural, for every noun
    relations: dict[tuple[str, ...], Relation]  # phrase as lowercase words -> relation
    max_relation_words: int

    def plural(self, noun: str) -> str:
        return self.plurals.get(noun) or pluralise(noun, {})


def pluralise(noun: str, irregular: dict[str, str]) -> str:
    """English plural by the regular rules, irregular forms from the lexicon first."""
    if noun in irregular:
        return irregular[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


def _read(directory: Path | None, name: str) -> dict[str, Any]:
    if directory is not None:
        return json.loads((Path(directory) / name).read_text(encoding="utf-8"))
    return json.loads(resources.files("mmpretrain.negatives").joinpath("lexicon", name).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=4)
def load_lexicon(directory: str | None = None) -> Lexicon:
    """The shipped lexicon, or one read from `directory` (same file names) to extend or replace it."""
    folder = Path(directory) if directory else None
    groups = {kind: _read(folder, name)["groups"] for kind, name in _ATTRIBUTE_FILES.items()}
    attribute_of: dict[str, tuple[str, int]] = {}
    for kind, kind_groups in groups.items():
        for index, group in enumerate(kind_groups):
            for word in group:
                if word in attribute_of:
                    raise ValueError(f"lexicon word {word!r} is both {attribute_of[word][0]} and {kind}")
                attribute_of[word] = (kind, index)
    counts = _read(folder, "counts.json")
    numbers = {word: int(value) for word, value in counts["words"].items()}
    objects = _read(folder, "objects.json")
    irregular = objects.get("irregular_plurals", {})
    categories = {name: list(nouns) for name, nouns in objects["categories"].items()}
    categories["generic"] = list(objects.get("generic", []))
    noun_of: dict[str, tuple[str, str, bool]] = {}
    plurals: dict[str, str] = {}
    for category, nouns in categories.items():
        for noun in nouns:
            if noun in attribute_of or noun in numbers:
                raise ValueError(f"lexicon noun {noun!r} is also an attribute or number word")
            plurals[noun] = pluralise(noun, irregular)
            noun_of[noun] = (noun, category, False)
            noun_of.setdefault(plurals[noun], (noun, category, True))
    relations: dict[tuple[str, ...], Relation] = {}
    rel = _read(folder, "relations.json")
    for phrase, counterpart, kind in rel["pairs"]:
        relations[tuple(phrase.split())] = Relation(phrase, counterpart, kind)
        relations[tuple(counterpart.split())] = Relation(counterpart, phrase, kind)
    for phrase in rel.get("symmetric", []):
        relations[tuple(phrase.split())] = Relation(phrase, None, "symmetric")
    return Lexicon(groups=groups, attribute_of=attribute_of, numbers=numbers,
                   number_words={v: w for w, v in numbers.items()}, digit_words=list(counts["digit_words"]),
                   categories=categories, noun_of=noun_of, plurals=plurals, relations=relations,
                   max_relation_words=max(len(k) for k in relations))
