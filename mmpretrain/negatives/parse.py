"""A small rule-based tokenizer, tagger and chunker over the lexicon: deterministic, no model, no download.

Captions of contrastive data are short noun phrases joined by relations and conjunctions ("a large blue square
left of a small green triangle"). That is all the generators need to see: which tokens are attributes (colour,
size, material), number words, object nouns and relation phrases, the noun phrases they form
(``det? number? attribute* noun``) and the ``NP relation NP`` triples. Words outside the lexicon are "other" and
left alone, so a generator that finds nothing it knows says so instead of guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mmpretrain.negatives.lexicon import ATTRIBUTE_KINDS, DIGITS, Lexicon, Relation

_TOKEN = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*|\d+|[^\sA-Za-z\d]")
_NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", ")", "]", "'s"}
DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "some", "no"}
CLAUSE_BREAKS = {",", ";", "and", "while", "but"}
# Words allowed between a noun phrase and the relation after it ("a cat sitting on a bed").
_MAX_GAP = 2


def tokenize(text: str) -> list[str]:
    """Words, numbers and single punctuation marks, case kept (so an unchanged token detokenizes as it was)."""
    return _TOKEN.findall(text)


def detokenize(tokens: list[str]) -> str:
    out: list[str] = []
    for token in tokens:
        if out and token not in _NO_SPACE_BEFORE and out[-1] not in ("(", "["):
            out.append(" ")
        out.append(token)
    return "".join(out)


def normalise(text: str) -> str:
    """What "the same caption" means: lowercase, punctuation stripped, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def words(text: str) -> list[str]:
    """The normalised words of a text (what the blind language model reads)."""
    return normalise(text).split()


def match_case(new: str, old: str) -> str:
    """`new` with `old`'s capitalisation: all capitals, an initial capital, or as given."""
    if len(old) > 1 and old.isupper():
        return new.upper()
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


_VOWEL_SOUND_EXCEPTIONS = {"one", "once", "unicorn", "uniform", "unit", "university", "european", "useful", "user"}
_SILENT_H = {"hour", "honest", "honour", "honor", "heir"}


def wants_an(word: str) -> bool:
    w = word.lower()
    if w.isdigit():
        return w.startswith("8") or w in ("11", "18")
    if w in _VOWEL_SOUND_EXCEPTIONS:
        return False
    return w[:1] in "aeiou" or w in _SILENT_H


def fix_articles(tokens: list[str]) -> list[str]:
    """Make every "a"/"an" agree with the word after it ("a orange square" -> "an orange square")."""
    fixed = list(tokens)
    for i in range(len(fixed) - 1):
        if fixed[i].lower() in ("a", "an") and fixed[i + 1][:1].isalnum():
            fixed[i] = match_case("an" if wants_an(fixed[i + 1]) else "a", fixed[i])
    return fixed


@dataclass
class Word:
    """A token and what the tagger made of it. kind: det, number, colour, size, material, noun, relation, punct,
    other. For a noun `lemma` is its singular and `category` its object category; for an attribute `group` is
    its synonym group; for a number `value` its value."""

    text: str
    kind: str
    lemma: str = ""
    category: str = ""
    plural: bool = False
    group: int = -1
    value: int = -1


@dataclass
class NounPhrase:
    """Tokens [start, end): optional determiner, optional count, attributes, then the head noun (end - 1)."""

    start: int
    end: int
    det: int | None = None
    count: int | None = None
    attributes: list[int] = field(default_factory=list)

    @property
    def head(self) -> int:
        return self.end - 1


@dataclass
class RelationSpan:
    start: int
    end: int
    relation: Relation


@dataclass
class Triple:
    """``subject relation object``: indices into Parsed.phrases and Parsed.relations."""

    subject: int
    relation: int
    object: int


@dataclass
class Parsed:
    tokens: list[str]
    words: list[Word]
    phrases: list[NounPhrase]
    relations: list[RelationSpan]
    triples: list[Triple]

    def clauses(self) -> list[tuple[int, int]]:
        """Token ranges between clause breaks (commas, "and", ...), each holding at least one word."""
        spans, start = [], 0
        for i, token in enumerate(self.tokens + [","]):
            if token.lower() in CLAUSE_BREAKS:
                if any(self.words[j].kind != "punct" for j in range(start, i)):
                    spans.append((start, i))
                start = i + 1
        return spans


def _tag(tokens: list[str], lex: Lexicon) -> tuple[list[Word], list[RelationSpan]]:
    lowered = [t.lower() for t in tokens]
    tagged: list[Word] = []
    relations: list[RelationSpan] = []
    i = 0
    while i < len(tokens):
        for size in range(min(lex.max_relation_words, len(tokens) - i), 0, -1):  # longest phrase first
            relation = lex.relations.get(tuple(lowered[i:i + size]))
            if relation is not None:
                relations.append(RelationSpan(i, i + size, relation))
                tagged.extend(Word(tokens[j], "relation") for j in range(i, i + size))
                i += size
                break
        else:
            tagged.append(_tag_word(tokens[i], lowered[i], lex))
            i += 1
    return tagged, relations


def _tag_word(token: str, low: str, lex: Lexicon) -> Word:
    if low in DETERMINERS:
        return Word(token, "det")
    if low in lex.numbers or (low.isdigit() and len(low) <= 3):
        return Word(token, "number", value=lex.numbers.get(low, int(low) if low.isdigit() else -1))
    if low in lex.attribute_of:
        kind, group = lex.attribute_of[low]
        return Word(token, kind, group=group)
    if low in lex.noun_of:
        lemma, category, plural = lex.noun_of[low]
        return Word(token, "noun", lemma=lemma, category=category, plural=plural)
    if re.fullmatch(r"[^\w\s]", token):
        return Word(token, "punct")
    return Word(token, "other")


def _digit_nouns(tagged: list[Word], lex: Lexicon) -> None:
    """A number that counts nothing is a digit named as a noun ("a handwritten seven", "the number 7")."""
    for i, word in enumerate(tagged):
        if word.kind != "number":
            continue
        j = i + 1
        while j < len(tagged) and tagged[j].kind in ATTRIBUTE_KINDS:
            j += 1
        counts_a_noun = j < len(tagged) and tagged[j].kind == "noun"
        low = word.text.lower()
        if not counts_a_noun and (low in lex.digit_words or (low.isdigit() and len(low) == 1)):
            word.kind, word.category = "noun", DIGITS
            word.lemma = low if not low.isdigit() else lex.digit_words[int(low)]


def _chunk(tagged: list[Word]) -> list[NounPhrase]:
    phrases = []
    for head, word in enumerate(tagged):
        if word.kind != "noun":
            continue
        start, attributes, count, det = head, [], None, None
        while start > 0 and tagged[start - 1].kind in ATTRIBUTE_KINDS:
            start -= 1
            attributes.insert(0, start)
        if start > 0 and tagged[start - 1].kind == "number":
            start -= 1
            count = start
        if start > 0 and tagged[start - 1].kind == "det":
            start -= 1
            det = start
        phrases.append(NounPhrase(start, head + 1, det, count, attributes))
    return phrases


def _triples(tagged: list[Word], phrases: list[NounPhrase], relations: list[RelationSpan]) -> list[Triple]:
    triples = []
    for r, span in enumerate(relations):
        before = [p for p, np in enumerate(phrases) if span.start - _MAX_GAP <= np.end <= span.start
                  and all(tagged[k].kind == "other" for k in range(np.end, span.start))]
        after = [p for p, np in enumerate(phrases) if np.start == span.end]
        if before and after:
            triples.append(Triple(before[-1], r, after[0]))
    return triples


def parse(caption: str, lex: Lexicon) -> Parsed:
    tokens = tokenize(caption)
    tagged, relations = _tag(tokens, lex)
    _digit_nouns(tagged, lex)
    phrases = _chunk(tagged)
    return Parsed(tokens, tagged, phrases, relations, _triples(tagged, phrases, relations))
