"""Near-duplicate removal (SemDeDup) and decontamination, on L2-normalised image embeddings with faiss.

SemDeDup (Abbas et al. 2023): k-means over the embeddings (faiss, spherical), then within each cluster the
samples are ordered by similarity to their centroid, least similar first (the paper's default keeps the least
prototypical), and a sample is dropped when its cosine with any sample before it exceeds `threshold`. The
clusters are formed by a Ray Data shuffle (`groupby(cluster)`), so a cluster's pairwise work runs on one worker
and no embedding passes through the driver; pairs are compared in blocks, so memory is O(block x cluster size).

Decontamination drops a training sample whose image is within `threshold` cosine of any image of the given
evaluation sets (an exact search: faiss IndexFlatIP).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.dataset as pads

from mmpretrain.curate.stages import FitContext, Stage, StageResult, absolute_spec, register_stage, require
from mmpretrain.curate.table import EMBEDDING, embedding_array, embeddings, strings

_BLOCK = 1024  # rows of a cluster compared at once against the rows before them


def train_kmeans(sample: np.ndarray, clusters: int, seed: int, iterations: int = 20) -> np.ndarray:
    """Spherical k-means centroids (unit rows) of `sample`; fewer clusters when there are fewer points."""
    import faiss

    clusters = max(1, min(clusters, len(sample)))
    kmeans = faiss.Kmeans(sample.shape[1], clusters, niter=iterations, seed=seed, spherical=True, verbose=False,
                          min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    return kmeans.centroids.copy()


def nearest(vectors: np.ndarray, index_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `vectors`, its highest inner product with a row of `index_vectors`, and that row."""
    import faiss

    if len(vectors) == 0 or len(index_vectors) == 0:
        return np.full(len(vectors), -np.inf, np.float32), np.full(len(vectors), -1, np.int64)
    index = faiss.IndexFlatIP(index_vectors.shape[1])
    index.add(np.ascontiguousarray(index_vectors, dtype=np.float32))
    similarity, position = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    return similarity[:, 0], position[:, 0]


def semdedup_order(centroid_similarity: np.ndarray, names: list[str]) -> np.ndarray:
    """The order samples are taken in within a cluster: least similar to the centroid first, then by name."""
    return np.array(sorted(range(len(names)), key=lambda i: (float(centroid_similarity[i]), names[i])), np.int64)


def semdedup_cluster(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For rows already in keeping order: each row's highest cosine with any row before it (-inf for the first)
    and which row that is. A row is a duplicate when the similarity exceeds the threshold (SemDeDup's rule: an
    earlier row counts even if it is a duplicate itself)."""
    n = len(vectors)
    best = np.full(n, -np.inf, np.float32)
    best_of = np.full(n, -1, np.int64)
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        sims = vectors[start:stop] @ vectors[:stop].T             # (block, stop)
        rows = np.arange(start, stop)[:, None]
        sims[np.arange(stop)[None, :] >= rows] = -np.inf         # only rows before each one
        if stop > 1:
            best_of[start:stop] = sims.argmax(axis=1)
            best[start:stop] = sims.max(axis=1)
    best_of[best == -np.inf] = -1
    return best, best_of


@dataclass
class _AssignClusters:
    centroids: Any  # an ObjectRef: the centroids travel through the object store, not inside the function

    def __call__(self, table: pa.Table) -> pa.Table:
        import ray

        vectors = embeddings(table)
        similarity, cluster = nearest(vectors, ray.get(self.centroids))
        return pa.table({"group": table.column("group"), "shard": table.column("shard"), "key": table.column("key"),
                         "cluster": pa.array(cluster, pa.int64()), "centroid_similarity": pa.array(similarity),
                         EMBEDDING: embedding_array(vectors)})


def _dedup_group(threshold: float):
    def dedup(group: pa.Table) -> pa.Table:
        names = [f"{s}\x00{k}" for s, k in zip(strings(group, "shard"), strings(group, "key"))]
        order = semdedup_order(group.column("centroid_similarity").to_numpy(), names)
        group = group.take(pa.array(order))
        best, best_of = semdedup_cluster(embeddings(group), threshold)
        shards, keys = strings(group, "shard"), strings(group, "key")
        return pa.table({"group": group.column("group"), "shard": shards, "key": keys, "duplicate_similarity": pa.array(best, pa.float32()),
                         "duplicate_of": [f"{shards[j]}:{keys[j]}" if j >= 0 else None for j in best_of]})
    return dedup


@dataclass
class _Sample:
    fraction: float
    seed: int

    def __call__(self, table: pa.Table) -> np.ndarray:
        """Each row independently with probability `fraction`, drawn from a hash of the seed and the row's name
        (the same rows on a rerun, and no two parts drawing the same positions)."""
        vectors = embeddings(table)
        if self.fraction >= 1.0:
            return vectors
        names = (f"{self.seed}\x00{s}\x00{k}".encode() for s, k in zip(strings(table, "shard"), strings(table, "key")))
        draws = np.array([int.from_bytes(hashlib.blake2b(n, digest_size=8).digest(), "little") / 2**64 for n in names])
        return vectors[draws < self.fraction]


def _kmeans_of_parts(clusters: int, seed: int, iterations: int, *parts: np.ndarray) -> np.ndarray:
    return train_kmeans(np.concatenate(parts), clusters, seed, iterations)


def _count_rows(table: pa.Table) -> int:
    return table.num_rows


@register_stage("dedup")
@dataclass
class Dedup(Stage):
    per_sample: ClassVar[bool] = False
    needs_embedding: ClassVar[bool] = True
    score_columns: ClassVar[tuple[str, ...]] = ("duplicate_similarity",)
    threshold: float = 0.95                # cosine above which a later sample of a cluster is a duplicate
    clusters: int = 100                    # k-means clusters (SemDeDup used 50k for LAION-440M)
    kmeans_sample: int = 100_000           # points the centroids are trained on (a uniform sample)
    kmeans_iterations: int = 20
    seed: Optional[int] = None
    similarities_file: Optional[str] = field(default=None, init=False)  # fitted: per-sample results

    def check(self, label: str) -> None:
        require(-1.0 <= self.threshold <= 1.0, label, "threshold must be a cosine in [-1, 1]")
        require(self.clusters >= 1 and self.kmeans_sample >= 1 and self.kmeans_iterations >= 1, label,
                "clusters, kmeans_sample and kmeans_iterations must be >= 1")

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        import ray

        seed = ctx.seed if self.seed is None else self.seed
        total = sum(ctx.over_parts(_count_rows))
        if total == 0:
            self.similarities_file = None
            return {"clusters": 0}
        fraction = min(1.0, self.kmeans_sample / total)
        # The k-means sample goes from the part workers to the k-means worker through the object store.
        samples = ctx.over_parts(_Sample(fraction, seed), refs=True)
        centroids = ray.remote(num_cpus=1)(_kmeans_of_parts).remote(self.clusters, seed, self.kmeans_iterations,
                                                                     *samples)
        clusters = len(ray.get(centroids))
        out = ctx.work_dir / f"dedup-{ctx.stage_index}"
        # Written under .partial and renamed: Ray's writer appends to a folder and names files as it likes, so a
        # folder from an earlier or killed attempt must never be added to.
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        dataset = ctx.survivors(_AssignClusters(centroids))
        dataset = dataset.groupby("cluster", num_partitions=max(1, min(clusters, 64))).map_groups(
            _dedup_group(self.threshold), batch_format="pyarrow")
        dataset.write_parquet(str(partial), partition_cols=["group"])  # by group: a part reads only its groups
        shutil.rmtree(out, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
        os.replace(partial, out)
        self.similarities_file = str(out)
        return {"clusters": clusters, "kmeans_points": min(total, self.kmeans_sample)}

    def apply(self, table: pa.Table) -> StageResult:
        if self.similarities_file is None or not Path(self.similarities_file).is_dir():  # nothing survived to it
            return StageResult([None] * table.num_rows)
        groups = pa.compute.unique(table.column("group")).to_pylist()
        found = pads.dataset(self.similarities_file, partitioning="hive").to_table(
            columns=["shard", "key", "duplicate_similarity"], filter=pads.field("group").isin(groups))
        lookup = {(s, k): v for s, k, v in zip(strings(found, "shard"), strings(found, "key"),
                                                found.column("duplicate_similarity").to_pylist())}
        similarity = np.array([lookup.get((s, k), np.nan) for s, k in zip(strings(table, "shard"),
                                                                             strings(table, "key"))], np.float32)
        reasons = [("duplicate" if s > self.threshold else None) for s in similarity]
        return StageResult(reasons, {"duplicate_similarity": similarity})

    def describe(self) -> dict[str, Any]:
        return {"type": self.type, "threshold": self.threshold, "clusters": self.clusters,
                "kmeans_sample": self.kmeans_sample}


@register_stage("decontaminate")
@dataclass
class Decontaminate(Stage):
    needs_embedding: ClassVar[bool] = True
    score_columns: ClassVar[tuple[str, ...]] = ("contamination_similarity",)
    eval: list[str] = field(default_factory=list)   # evaluation shard sets (directory, glob or brace pattern)
    threshold: float = 0.95
    _eval_vectors: Optional[np.ndarray] = field(default=None, init=False, repr=False)

    def check(self, label: str) -> None:
        require(isinstance(self.eval, list) and bool(self.eval) and all(isinstance(e, str) for e in self.eval),
                label, "'eval' must list the evaluation shard sets to remove from training")
        require(-1.0 <= self.threshold <= 1.0, label, "threshold must be a cosine in [-1, 1]")
        self.eval = [absolute_spec(e) for e in self.eval]

    def fit(self, ctx: FitContext) -> dict[str, Any]:
        self._eval_vectors = ctx.eval_embeddings(self.eval)
        return {"eval_images": int(len(self._eval_vectors))}

    def apply(self, table: pa.Table) -> StageResult:
        assert self._eval_vectors is not None, "decontaminate applied before fit"
        similarity, _ = nearest(embeddings(table), self._eval_vectors)
        return StageResult([("contaminated" if s >= self.threshold else None) for s in similarity],
                           {"contamination_similarity": similarity.astype(np.float32)})

    def describe(self) -> dict[str, Any]:
        return {"type": self.type, "eval": list(self.eval), "threshold": self.threshold}
