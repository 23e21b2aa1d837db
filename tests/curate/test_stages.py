"""The curation stages' maths against naive references, without Ray: every global stage is fitted through an
in-memory FitContext over parts, so the sums over parts are exercised as they run on workers."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mmpretrain.curate import STAGES  # noqa: F401  (registers)
from mmpretrain.curate.balance import Balance, build_matcher, match_entries
from mmpretrain.curate.decide import survivors
from mmpretrain.curate.dedup import nearest, semdedup_cluster, semdedup_order, train_kmeans
from mmpretrain.curate.stages import BasicFilter, ClipScore, parse_stages
from mmpretrain.curate.table import embedding_array
from mmpretrain.errors import ConfigError


class MemoryContext:
    """FitContext over in-memory parts (what RayFitContext does on workers)."""

    def __init__(self, parts: list[pa.Table], seed: int = 0) -> None:
        self.parts, self.seed, self.work_dir, self.stage_index, self.before = parts, seed, Path("."), 0, []

    def over_parts(self, fn, refs=False):
        return [fn(survivors(part, self.before)) for part in self.parts]


def table(n: int, seed: int = 0, captions: list[str] | None = None, dim: int = 8) -> pa.Table:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pa.table({"group": pa.array([0] * n, pa.int32()), "shard": [f"s{seed}"] * n,
                     "key": [f"k{seed}-{i}" for i in range(n)],
                     "caption": captions or [f"caption {i}" for i in range(n)],
                     "width": pa.array([32] * n, pa.int32()), "height": pa.array([32] * n, pa.int32()),
                     "read_reason": pa.array([None] * n, pa.string()),
                     "clip_score": pa.array(rng.uniform(-0.2, 0.6, n).astype(np.float32)),
                     "image_emb": embedding_array(vectors)})


def test_basic_filter_names_the_first_rule_broken():
    f = BasicFilter(min_caption_words=2, max_caption_words=5, min_alpha_fraction=0.5, min_image_side=10,
                    max_aspect_ratio=3.0)
    assert f.reason("a red dog", 32, 32) is None
    assert f.reason("dog", 32, 32) == "caption_too_short"
    assert f.reason("one two three four five six", 32, 32) == "caption_too_long"
    assert f.reason("IMG_2041.JPG 0031", 32, 32) == "caption_characters"
    assert f.reason("a red dog", 9, 32) == "image_too_small"
    assert f.reason("a red dog", 100, 20) == "aspect_ratio"


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.77, 1.0])
def test_top_fraction_threshold_is_exact_over_all_parts(fraction):
    parts = [table(n, seed) for seed, n in enumerate([50, 123, 7, 300])]
    stage = ClipScore(top_fraction=fraction)
    stage.fit(MemoryContext(parts))
    scores = np.concatenate([p.column("clip_score").to_numpy() for p in parts])
    k = int(np.ceil(fraction * len(scores)))
    assert stage.threshold == np.sort(scores)[::-1][k - 1]           # numpy's order statistic, not a bin edge
    kept = sum(r is None for p in parts for r in stage.apply(p).reasons)
    assert kept == k                                                  # distinct random scores: no ties


def _naive_matches(caption: str, entries: list[str]) -> list[int]:
    return [i for i, e in enumerate(entries) if re.search(rf"(?<![0-9a-z]){re.escape(e)}(?![0-9a-z])", caption.lower())]


def test_entry_matching_equals_a_regex_reference():
    entries = ["dog", "hot dog", "cat", "new york", "york", "a"]
    automaton = build_matcher(entries)
    for text in ["A hot dog in New York", "dogma of cats", "the cat, the dog.", "yorkshire", "", "a cat"]:
        assert match_entries(text, automaton, whole_words=True) == _naive_matches(text, entries), text
    assert match_entries("dogma", automaton, whole_words=False) == [0, 5]   # raw substrings: "dog" and "a"


def test_balance_caps_head_entries_and_keeps_tail_ones():
    rng = np.random.default_rng(0)
    captions = ["a photo of a dog"] * 4000 + ["a photo of a cat"] * 50 + ["just a car"] * 20
    rng.shuffle(captions)
    parts = [table(len(c), seed, captions=list(c)) for seed, c in enumerate(np.array_split(captions, 3))]
    stage = Balance(entries=["dog", "cat"], per_entry=500)
    stage.check("test")
    stage.fit(MemoryContext(parts))
    assert stage.counts == {0: 4000, 1: 50}
    reasons = Counter(r for p in parts for r in stage.apply(p).reasons)
    kept_dogs = 4000 - reasons["balance"]
    assert abs(kept_dogs - 500) < 4 * np.sqrt(4000 * 0.125 * 0.875)  # Binomial(4000, 1/8) around 500
    assert reasons["no_entry_match"] == 20                            # "car" is no entry, and "car" != "cat"
    again = Balance(entries=["dog", "cat"], per_entry=500)
    again.check("test")
    again.fit(MemoryContext(parts[::-1]))                             # any part order: the same draws
    assert [again.apply(p).reasons for p in parts] == [stage.apply(p).reasons for p in parts]


def test_semdedup_equals_the_naive_pairwise_rule():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2500, 6)).astype(np.float32)
    vectors[100] = vectors[7]                      # an exact duplicate, and one across the 1024-row block edge
    vectors[2000] = vectors[3] + 1e-3
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    best, best_of = semdedup_cluster(vectors, 0.99)
    sims = vectors @ vectors.T
    for i in [0, 1, 100, 999, 1024, 1500, 2000, 2499]:
        expected = sims[i, :i].max() if i else -np.inf
        assert best[i] == pytest.approx(expected, abs=1e-5)
        if i:
            assert best_of[i] == int(np.argmax(sims[i, :i]))
    assert best[100] > 0.9999 and best_of[100] == 7 and best[2000] > 0.99 and best_of[2000] == 3
    order = semdedup_order(np.array([0.9, 0.1, 0.5]), ["a", "b", "c"])
    assert order.tolist() == [1, 2, 0]             # least similar to the centroid first


def test_nearest_and_kmeans_against_numpy():
    rng = np.random.default_rng(2)
    queries, index = rng.standard_normal((40, 5)).astype(np.float32), rng.standard_normal((30, 5)).astype(np.float32)
    similarity, position = nearest(queries, index)
    assert np.allclose(similarity, (queries @ index.T).max(1), atol=1e-5)
    assert (position == (queries @ index.T).argmax(1)).all()
    centres = np.eye(4, dtype=np.float32)
    points = np.repeat(centres, 25, axis=0) + 0.01 * rng.standard_normal((100, 4)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    found = train_kmeans(points, 4, seed=0)
    assert found.shape == (4, 4) and np.allclose(np.linalg.norm(found, axis=1), 1.0, atol=1e-5)  # spherical
    _, assigned = nearest(points, found)
    for c in set(assigned.tolist()):  # converged Lloyd: each centroid is the normalised mean of its points
        mean = points[assigned == c].mean(0)
        assert np.allclose(found[c], mean / np.linalg.norm(mean), atol=1e-4)


@pytest.mark.parametrize("stages, message", [
    ([{"type": "nope"}], "unknown stage type 'nope'"),
    ([{"type": "basic_filter", "min_words": 2}, {"type": "write"}], "unknown key(s) min_words"),
    ([{"type": "clip_score", "top_fraction": 0.5}, {"type": "write"}], "needs embeddings"),
    ([{"type": "embed", "model": "m"}], "last stage must be the one 'write' stage"),
    ([{"type": "embed", "model": "m"}, {"type": "clip_score", "top_fraction": 0.5, "min_score": 0.1},
      {"type": "write"}], "exactly one of min_score and top_fraction"),
    ([{"type": "embed"}, {"type": "write"}], "'model' is required"),
])
def test_bad_stage_lists_are_one_line_errors(stages, message):
    with pytest.raises(ConfigError) as error:
        parse_stages(stages, "c.yaml")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_top_fraction_keeps_exactly_its_share_when_scores_tie_at_the_cut():
    part = table(10, 3)
    part = part.set_column(part.schema.get_field_index("clip_score"), "clip_score",
                           pa.array([0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1], pa.float32()))
    stage = ClipScore(top_fraction=0.3)
    stage.fit(MemoryContext([part.slice(0, 4), part.slice(4)]))      # the ties span two parts
    reasons = stage.apply(part).reasons
    assert sum(r is None for r in reasons) == 3 and reasons[0] is None and reasons[9] == "clip_score"
    assert stage.apply(part).reasons == reasons                       # the same two of the eight tied, every time
