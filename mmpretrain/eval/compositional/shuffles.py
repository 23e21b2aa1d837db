"""Word-order negatives for COCO-Order and Flickr-Order (ARO, Yuksekgonul et al. 2023), generated when read.

ARO perturbs each caption four ways: shuffle nouns and adjectives, shuffle everything but them, shuffle trigrams,
shuffle words within trigrams. The first two need a part-of-speech tagger (ARO uses spaCy), which this project
does not carry; the two trigram shuffles need none and are made here. An annotation entry may instead carry its
own negatives (``"negatives": [{"text", "type"}]``), e.g. ARO's four exported, and those are used as given.

ARO tokenises with nltk and lower-cases with its `pre_caption`; we split `pre_caption`'s output on spaces, which
is the same for captions without punctuation left after it. The shuffles are seeded by the caption's CRC, so a
set reads the same on every run and every machine, whatever order it is read in.
"""

from __future__ import annotations

import random
import re
import zlib

ORDER_TYPES = ("shuffle_trigrams", "shuffle_within_trigrams")


def pre_caption(caption: str, max_words: int = 50) -> str:
    """ARO's (and BLIP's) caption normalisation: lower case, punctuation to spaces, at most `max_words` words."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    return " ".join(caption.split(" ")[:max_words])


def _trigrams(words: list[str]) -> list[list[str]]:
    return [words[i:i + 3] for i in range(0, len(words), 3)]


def shuffle_trigrams(words: list[str], rng: random.Random) -> list[str]:
    trigrams = _trigrams(words)
    rng.shuffle(trigrams)
    return [w for t in trigrams for w in t]


def shuffle_within_trigrams(words: list[str], rng: random.Random) -> list[str]:
    trigrams = _trigrams(words)
    for trigram in trigrams:
        rng.shuffle(trigram)
    return [w for t in trigrams for w in t]


def order_negatives(caption: str) -> list[tuple[str, str]]:
    """(negative, type) for each trigram shuffle of `caption`, leaving out one that equals it (a word-order
    negative that reads the same is no negative: a caption of one trigram or of repeated words)."""
    words = caption.split(" ")
    negatives = []
    for name, shuffle in (("shuffle_trigrams", shuffle_trigrams), ("shuffle_within_trigrams",
                                                                  shuffle_within_trigrams)):
        rng = random.Random(zlib.crc32(f"{name}\0{caption}".encode("utf-8")))
        for _ in range(10):  # a short caption may shuffle back into itself: draw again
            shuffled = " ".join(shuffle(list(words), rng))
            if shuffled != caption:
                negatives.append((shuffled, name))
                break
    return negatives
