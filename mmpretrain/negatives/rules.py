"""The built-in rule-based generators, one per negative type.

Each parses the caption with the lexicon tagger (parse.py), lists every edit of its kind that the caption
allows, shuffles them with the caller's rng and returns the first few that differ from the caption after
normalisation. Edits are chosen to make a *false* caption: attributes and nouns are replaced from other synonym
groups / other members of a category, relation arguments are swapped only around relations that are not
symmetric, and `partial` changes one clause rather than dropping any (a caption that says less is still true).
"""

from __future__ import annotations

import random
from itertools import combinations
from typing import Any

from mmpretrain.negatives.base import Negative, Skip, get_generator, register_generator
from mmpretrain.negatives.lexicon import ATTRIBUTE_KINDS, DIGITS, Lexicon, load_lexicon
from mmpretrain.negatives.parse import (Parsed, detokenize, fix_articles, match_case, normalise, parse,
                                        tokenize)

Edit = tuple[list[str], dict[str, Any]]
MAX_CANDIDATES = 6  # per caption and call: enough for per_caption draws, few enough to stay cheap


class RuleGenerator:
    """Shared plumbing: parse, list edits (`edits`), shuffle, render, drop copies of the caption."""

    name = ""

    def __init__(self, lexicon: Lexicon | None = None, max_candidates: int = MAX_CANDIDATES) -> None:
        self.lex = lexicon or load_lexicon()
        self.max_candidates = max_candidates
        # Replacement words, when set, come only from these (the data's own words): a word the data never uses
        # gives a negative away to a text-only model (blind.py), so it teaches nothing about the image.
        self.vocabulary: frozenset[str] | None = None

    def allowed(self, word: str) -> bool:
        return self.vocabulary is None or word.lower() in self.vocabulary

    def edits(self, parsed: Parsed, rng: random.Random) -> list[Edit] | Skip:
        raise NotImplementedError

    def generate(self, caption: str, rng: random.Random) -> list[Negative] | Skip:
        parsed = parse(caption, self.lex)
        edits = self.edits(parsed, rng)
        if isinstance(edits, Skip):
            return edits
        rng.shuffle(edits)
        seen = {normalise(caption)}
        negatives = []
        for tokens, detail in edits:
            text = detokenize(fix_articles(tokens))
            if normalise(text) in seen:
                continue
            seen.add(normalise(text))
            negatives.append(Negative(text, self.name, detail, caption))
            if len(negatives) == self.max_candidates:
                break
        return negatives or Skip("every edit leaves the caption unchanged")


def _has_order(parsed: Parsed) -> bool:
    """Whether a relation whose sides cannot be exchanged links two phrases ("left of", not "next to")."""
    return any(parsed.relations[t.relation].relation.kind != "symmetric" for t in parsed.triples)


def _bag_of_phrases(parsed: Parsed) -> list[str]:
    return sorted(" ".join(parsed.tokens[i].lower() for i in range(np.start, np.end) if i != np.det)
                  for np in parsed.phrases)


def same_meaning_as_a_list(parsed: Parsed, tokens: list[str], lex: Lexicon) -> bool:
    """Whether an edit only reorders the noun phrases of a caption without ordered relations: "a red square and
    a blue square" with the colours swapped names the same things, so it is no negative."""
    if _has_order(parsed):
        return False
    edited = parse(detokenize(tokens), lex)
    return not _has_order(edited) and _bag_of_phrases(edited) == _bag_of_phrases(parsed)


@register_generator("swap_attributes")
class SwapAttributes(RuleGenerator):
    """"the red square and the blue circle" -> "the blue square and the red circle": same words, wrong binding."""

    name = "swap_attributes"

    def edits(self, parsed: Parsed, rng: random.Random) -> list[Edit] | Skip:
        holders = [(np, i) for np in parsed.phrases for i in np.attributes]
        if len({id(np) for np, _ in holders}) < 2:
            return Skip("fewer than two noun phrases with attributes")
        out: list[Edit] = []
        for (np_a, a), (np_b, b) in combinations(holders, 2):
            wa, wb = parsed.words[a], parsed.words[b]
            if np_a is np_b or wa.kind != wb.kind or wa.group == wb.group:
                continue
            tokens = list(parsed.tokens)
            tokens[a], tokens[b] = match_case(wb.text.lower(), wa.text), match_case(wa.text.lower(), wb.text)
            if same_meaning_as_a_list(parsed, tokens, self.lex):
                continue
            out.append((tokens, {"kind": wa.kind, "swapped": [wa.text.lower(), wb.text.lower()]}))
        return out or Skip("no two noun phrases differ in one attribute kind")


@register_generator("replace_attribute")
class ReplaceAttribute(RuleGenerator):
    """One colour, size or material word replaced by a word of another synonym group of the same kind.
    (Number words are the `count` type's: changing them needs plural agreement.)"""

    name = "replace_attribute"

    def __init__(self, lexicon: Lexicon | None = None, kinds: tuple[str, ...] = ATTRIBUTE_KINDS,
                 max_candidates: int = MAX_CANDIDATES) -> None:
        super().__init__(lexicon, max_candidates)
        self.kinds = kinds

    def edits(self, parsed: Parsed, rng: random.Random) -> list[Edit] | Skip:
        out: list[Edit] = []
        for i, word in enumerate(parsed.words):
            if word.kind not in self.kinds:
                continue
            for g, group in enumerate(self.lex.groups[word.kind]):
                if g != word.group and self.allowed(group[0]):
                    tokens = list(parsed.tokens)
                    tokens[i] = match_case(group[0], word.text)
                    out.append((tokens, {"kind": word.kind, "from": word.text.lower(), "to": group[0]}))
        return out or Skip(f"no {' / '.join(self.kinds)} word")


@register_generator("replace_object")
class ReplaceObject(RuleGenerator):
    """A noun replaced by another of its category, number kept ("two dogs" -> "two cats", "a 7" -> "a 3")."""

    name = "replace_object"

    def edits(self, parsed: Parsed, rng: random.Random) -> list[Edit] | Skip:
        out: list[Edit] = []
        nouns = [parsed.words[np.head] for np in parsed.phrases]
        for np in parsed.phrases:
            word = parsed.words[np.head]
            if word.category == "generic":
                continue
            members = self.lex.digit_words if word.category == DIGITS else self.lex.categories[word.category]
            for other in members:
                if other == word.lemma:
                    continue
                if word.category == DIGITS and word.text.isdigit():
                    form = str(self.lex.digit_words.index(other))
                else:
                    form = self.lex.plural(other) if word.plural else other
                if not self.allowed(form):
                    continue
                tokens = list(parsed.tokens)
                tokens[np.head] = match_case(form, word.text)
                out.append((tokens, {"category": word.category, "from": word.text.lower(), "to": form}))
        if not out:
            return Skip("only generic nouns" if nouns else "no object noun from the lexicon")
        return out


@register_generator("swap_relation")
class SwapRelation(RuleGenerator):
    """"A left of B" -> "B left of A" (arguments swapped) or "A right of B" (the relation's counterpart);
    never around a symmetric relation ("next to"), where either would still be true."""

    name = "swap_relation"

    def edits(self, parsed: Parsed, rng: random.Random) -> list[Edit] | Skip:
        if not parsed.triples:
            return Skip("no relation between two noun phrases")
        out: list[Edit] = []
        t = parsed.tokens
        for triple in parsed.triples:
            span = parsed.relations[triple.relation]
            if span.relation.kind == "symmetric":
                continue
            s, o = parsed.phrases[triple.subject], parsed.phrases[triple.object]
            detail = {"relation": span.relation.phrase}
            if [w.lower() for w in t[s.start:s.end]] != [w.lower() for w in t[o.start:o.end]]:
                subject, obj = t[s.start:s.end], t[o.start:o.end]
                if s.start == 0:  # the object moves to the front: capitals stay with the caption's first word
                    subject, obj = [subject[0].lower(), *subject[1:]], [match_case(obj[0], t[0]), *obj[1:]]
                tokens = t[:s.start] + obj + t[s.end:o.start] + subject + t[o.end:]
                out.append((tokens, {**detail, "mode": "swap_arguments"}))
            if span.relation.counterpart:
                words = span.relation.counterpart.split()
                words[0] = match_case(words[0], t[span.start])
                tokens = t[:span.start] + words + t[span.end:]
                out.append((tokens, {**detail, "mode": span.relation.kind, "to": span.relation.counterpart}))
        return out or Skip("only symmetric relations")


@register_generator("shuffle")
class Shuffle(RuleGenerator):
    """NegCLIP's word-order perturbations (Yuksekgonul et al., 2023): shuffle the nouns, shuffle the adjectives,
    shuffle the trigrams, or shuffle the words within each trigram; one candidate per applicable mode."""

    name = "shuffle"
    MODES = ("nouns", "adjectives", "trigrams", "within_trigrams")
    _TRIES = 20

    def edits(self, parsed: Parsed, rng: random.Random) -> list[Edit] | Skip:
        out: list[Edit] = []
        for mode in self.MODES:
            tokens = getattr(self, f"_{mode}")(parsed, rng)
            if tokens is not None and not same_meaning_as_a_list(parsed, tokens, self.lex):
                out.append((tokens, {"mode": mode}))
        return out or Skip("too few nouns, adjectives or words to shuffle")

    def _permuted(self, items: list[Any], rng: random.Random) -> list[Any] | None:
        """A random order of `items` other than theirs (None when all are equal)."""
        if len(set(map(str, items))) < 2:
            return None
        for _ in range(self._TRIES):
            order = rng.sample(items, len(items))
            if list(map(str, order)) != list(map(str, items)):
                return order
        return None

    def _nouns(self, parsed: Parsed, rng: random.Random) -> list[str] | None:
        heads = [np.head for np in parsed.phrases if parsed.words[np.head].category != DIGITS]
        lemmas = self._permuted([parsed.words[h].lemma for h in heads], rng)
        if lemmas is None:
            return None
        tokens = list(parsed.tokens)
        for h, lemma in zip(heads, lemmas):
            tokens[h] = match_case(self.lex.plural(lemma) if parsed.words[h].plural else lemma, tokens[h])
        return tokens

    def _adjectives(self, parsed: Parsed, rng: random.Random) -> list[str] | None:
        slots = [i for i, w in enumerate(parsed.words) if w.kind in ATTRIBUTE_KINDS]
        texts = self._permuted([parsed.tokens[i].lower() for i in slots], rng)
        if texts is None:
            return None
        tokens = list(parsed.tokens)
        for i, text in zip(slots, texts):
            tokens[i] = match_case(text, tokens[i])
        return tokens

    @staticmethod
    def _trigram_list(parsed: Parsed) -> list[list[str]]:
        plain = [t.lower() for t, w in zip(parsed.tokens, parsed.words) if w.kind != "punct"]
        return [plain[i:i + 3] for i in range(0, len(plain), 3)]

    def _trigrams(self, parsed: Parsed, rng: random.Random) -> list[str] | None:
        grams = self._trigram_list(parsed)
        order = self._permuted(grams, rng) if len(grams) >= 2 else None
        return None if order is None else [w for gram in order for w in gram]

    def _within_trigrams(self, parsed: Parsed, rng: random.Random) -> list[str] | None:
        grams = self._trigram_list(parsed)
        original = [w for gram in grams for w in gram]
        for _ in range(self._TRIES):
            shuffled = [w for gram in grams for w in rng.sample(gram, len(gram))]
            if shuffled != original:
                return shuffled
        return None


_NEGATIONS = {"no", "not", "without", "never", "nothing", "none", "n't", "isn't", "aren't"}


@register_generator("negate")
class Negate(RuleGenerator):
    """A negation inserted into one noun phrase: "a red square" -> "no red square" (mode no) or
    "a square that is not red" (mode not_attribute). Captions already holding a negation are skipped: negating
    them again would make a double negative whose truth a rule cannot judge."""

    name = "negate"

    def edits(self, parsed: Parsed, rng: random.Random) -> list[Edit] | Skip:
        if any(t.lower() in _NEGATIONS for t in parsed.tokens):
            return Skip("already negated")
        out: list[Edit] = []
        t = parsed.tokens
        for np in parsed.phrases:
            head = parsed.words[np.head]
            plural = head.plural or (np.count is not None and parsed.words[np.count].value > 1)
            if np.det is not None or np.count is not None or head.plural:
                first = np.det if np.det is not None else np.count
                if first is not None:
                    # "the two circles" -> "no circles": the count goes with the determiner.
                    end = np.count + 1 if np.count is not None else first + 1
                    tokens = t[:first] + [match_case("no", t[first])] + t[end:]
                else:  # a bare plural: "dogs on a bed" -> "no dogs on a bed"
                    tokens = t[:np.start] + [match_case("no", t[np.start])] + t[np.start:]
                    if np.start == 0:
                        tokens[1] = tokens[1].lower()
                out.append((tokens, {"mode": "no", "phrase": " ".join(t[np.start:np.end]).lower()}))
            for a in np.attributes:
                clause = ["that", "are" if plural else "is", "not", t[a].lower()]
                kept = [t[i] for i in range(np.start, np.end) if i != a]
                if a == np.start:
                    kept[0] = match_case(kept[0], t[a])
                tokens = t[:np.start] + kept + clause + t[np.end:]
                out.append((tokens, {"mode": "not_attribute", "attribute": t[a].lower()}))
        return out or Skip("no noun phrase to negate")


@register_generator("count")
class Count(RuleGenerator):
    """A number word (or numeral) counting a noun changed, the noun agreeing: "two circles" -> "three circles",
    "one dog" -> "two dogs". With `articles=True`, "a dog" -> "two dogs" too (off by default: "a dog" is also
    true of a picture with two dogs, so its count says less than a number word's)."""

    name = "count"
    MAX_VALUE = 10

    def __init__(self, lexicon: Lexicon | None = None, articles: bool = False,
                 max_candidates: int = MAX_CANDIDATES) -> None:
        super().__init__(lexicon, max_candidates)
        self.articles = articles

    def edits(self, parsed: Parsed, rng: random.Random) -> list[Edit] | Skip:
        out: list[Edit] = []
        t = parsed.tokens
        for np in parsed.phrases:
            head = parsed.words[np.head]
            if np.count is not None:
                slot, value, numeral = np.count, parsed.words[np.count].value, t[np.count].isdigit()
            elif self.articles and np.det is not None and t[np.det].lower() in ("a", "an") and not head.plural:
                slot, value, numeral = np.det, 1, False
            else:
                continue
            if value < 1:
                continue
            for new in range(1, self.MAX_VALUE + 1):
                if new == value or (new == 1 and slot == np.det):
                    continue
                tokens = list(t)
                tokens[slot] = match_case(str(new) if numeral else self.lex.number_words[new], t[slot])
                noun = head.lemma if new == 1 else self.lex.plural(head.lemma)
                tokens[np.head] = match_case(noun, t[np.head])
                out.append((tokens, {"from": value, "to": new}))
        return out or Skip("no number word counting a noun")


@register_generator("partial")
class Partial(RuleGenerator):
    """One clause of a caption of several made wrong (by another rule), every other clause kept as it was.
    Dropping a clause would give a true, incomplete caption: that is not a negative, so this never truncates."""

    name = "partial"
    VIA = ("replace_attribute", "replace_object", "swap_relation", "count")

    def edits(self, parsed: Parsed, rng: random.Random) -> list[Edit] | Skip:
        clauses = parsed.clauses()
        if len(clauses) < 2:
            return Skip("a single clause")
        out: list[Edit] = []
        for k, (a, b) in enumerate(clauses):
            clause = detokenize(parsed.tokens[a:b])
            for via in self.VIA:
                generator = get_generator(via)
                if isinstance(generator, RuleGenerator):
                    generator.vocabulary = self.vocabulary
                made = generator.generate(clause, rng)
                if isinstance(made, Skip):
                    continue
                for negative in made[:2]:
                    tokens = parsed.tokens[:a] + tokenize(negative.text) + parsed.tokens[b:]
                    out.append((tokens, {"clause": k, "clauses": len(clauses), "via": via, **negative.detail}))
        return out or Skip("no clause another rule can change")
