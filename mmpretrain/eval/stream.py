"""Stream a benchmark set through DataLoader workers into several models at once, keeping only features.

Memory is bounded by the batch, not the dataset: images are read and decoded in the workers (the safe shard
reader, counted skips), transformed once, and each batch is embedded by every model that shares that transform
(`preprocess_key`) before it is dropped. What stays is per model an [N, D] feature matrix, plus labels or
captions and keys.

Order and ranks: units (shards, file slices) go to ranks round-robin and, within a rank, to workers round-robin;
every item carries (unit index, position in unit). After the pass the ranks' pieces are gathered and sorted by
that pair, so the features come out in the dataset's own order whatever the number of workers or ranks, and every
rank computes identical metrics.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from mmpretrain.eval.sources import Record, Source, decode_record_image
from mmpretrain.data.skips import SampleSkipped, SkipEvent, SkipLedger


@dataclass
class StreamResult:
    """The pass over one set for one group of models: features per model label [N, D] (float32, CPU), and per
    item its label (zero-shot), captions (retrieval), key and (unit, position) address."""

    features: dict[str, torch.Tensor]
    labels: list[int] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    addresses: list[tuple[int, int]] = field(default_factory=list)
    skips: SkipLedger = field(default_factory=SkipLedger)


class _UnitStream(IterableDataset):
    """This rank's units, split again over the DataLoader's workers; yields batches of transformed images."""

    def __init__(self, source: Source, units: Sequence[tuple[int, Any]], transform: Callable[[Any], torch.Tensor],
                 batch_size: int, max_items: Optional[int] = None) -> None:
        super().__init__()
        self.source, self.units, self.transform, self.batch_size = source, list(units), transform, batch_size
        # The first N items in (unit, position) order are among the first N this worker yields (it walks its
        # units in that order), so with max_samples a worker stops there: nothing after it is read or decoded.
        self.max_items = max_items

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        mine = self.units if info is None else self.units[info.id::info.num_workers]
        batch: dict[str, list[Any]] = _empty()
        yielded = 0
        for unit_index, unit in mine:
            if self.max_items is not None and yielded >= self.max_items:
                break
            for position, item in enumerate(self.source.read(unit)):
                if self.max_items is not None and yielded >= self.max_items:
                    break
                if isinstance(item, SkipEvent):
                    batch["skips"].append(item)
                    continue
                try:
                    pixels = self.transform(decode_record_image(item))
                except SampleSkipped as e:
                    batch["skips"].append(SkipEvent(e.reason, str(unit), 1, f"{item.key}: {e.detail}", item.key))
                    continue
                _append(batch, item, pixels, (unit_index, position))
                yielded += 1
                if len(batch["pixels"]) == self.batch_size:
                    yield _finish(batch)
                    batch = _empty()
            batch["units_done"].append(unit_index)  # progress: a unit is finished
        if batch["pixels"] or batch["skips"] or batch["units_done"]:
            yield _finish(batch)


def _empty() -> dict[str, list[Any]]:
    return {"pixels": [], "labels": [], "captions": [], "keys": [], "addresses": [], "skips": [], "units_done": []}


def _append(batch: dict[str, list[Any]], record: Record, pixels: torch.Tensor, address: tuple[int, int]) -> None:
    batch["pixels"].append(pixels)
    batch["labels"].append(-1 if record.label is None else record.label)
    batch["captions"].append(record.captions)
    batch["keys"].append(record.key)
    batch["addresses"].append(address)


def _finish(batch: dict[str, list[Any]]) -> dict[str, Any]:
    done = dict(batch)
    done["pixels"] = torch.stack(batch["pixels"]) if batch["pixels"] else None
    return done


def rank_units(units: Sequence[Any], rank: int, world: int) -> list[tuple[int, Any]]:
    """This rank's share of the units, each with its index in the full list."""
    return [(index, unit) for index, unit in enumerate(units) if index % world == rank]


def stream_features(source: Source, models: Sequence[Any], transform: Callable[[Any], torch.Tensor],
                    batch_size: int, workers: int, device: torch.device, progress: bool = True, desc: str = "",
                    max_samples: Optional[int] = None, amp: bool = False, shard_over_ranks: bool = False
                    ) -> StreamResult:
    """One pass over `source`: every record decoded and transformed once, embedded by each of `models` (objects
    with `.label` and `.model.encode`), put in the dataset's order.

    `shard_over_ranks`: every rank of the process group calls this together, reads its share of the units, and
    gets all the features (a collective). Off, this process reads the whole set alone (training's evaluation,
    which rank 0 may run while the others wait). `max_samples` keeps the first N usable items in that order.
    `amp`: bf16 autocast (CUDA only)."""
    together = shard_over_ranks and dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if together else 1
    rank = dist.get_rank() if together else 0
    units = source.units()
    mine = rank_units(units, rank, world)
    loader = DataLoader(_UnitStream(source, mine, transform, batch_size, max_samples), batch_size=None,
                        num_workers=min(workers, len(mine)), pin_memory=device.type == "cuda",
                        persistent_workers=False)
    chunks: dict[str, list[torch.Tensor]] = {m.label: [] for m in models}
    local = StreamResult(features={})
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda"
                else contextlib.nullcontext())
    bar = tqdm(total=len(units), desc=desc, unit="unit", disable=not progress or rank != 0, leave=False)
    threads = _encoding_threads(device, loader.num_workers)
    with torch.inference_mode(), autocast, threads:
        for batch in loader:
            for skip in batch["skips"]:
                local.skips.record(0, [skip])
            bar.update(len(batch["units_done"]) * world)
            if batch["pixels"] is None:
                continue
            pixels = batch["pixels"].to(device, non_blocking=True)
            for m in models:
                chunks[m.label].append(m.model.encode("image", pixels, normalize=True).float().cpu())
            local.labels += batch["labels"]
            local.captions += batch["captions"]
            local.keys += batch["keys"]
            local.addresses += batch["addresses"]
    bar.close()
    local.skips.record(len(local.keys), [])
    local.features = {label: torch.cat(parts) if parts else torch.empty(0) for label, parts in chunks.items()}
    merged = _gather(local, world)
    return _ordered(merged, max_samples)


@contextlib.contextmanager
def _encoding_threads(device: torch.device, workers: int) -> Iterator[None]:
    """On the CPU, the encoding process leaves one core per decoding worker: torch's intra-op threads wait for
    each other at every parallel region, so one of them descheduled by a busy worker stalls the rest (a text
    batch of 64 took 17x longer with 2 threads than with 1 on 2 busy cores). The count is restored afterwards."""
    before = torch.get_num_threads()
    if device.type == "cpu" and workers > 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, min(before, cores - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _gather(local: StreamResult, world: int) -> StreamResult:
    if world == 1:
        return local
    pieces: list[Optional[StreamResult]] = [None] * world
    dist.all_gather_object(pieces, local)  # CPU objects: features are small next to the images they replace
    present = [p for p in pieces if p is not None]
    merged = StreamResult(features={label: torch.cat([p.features[label] for p in present
                                                      if len(p.features[label])] or [torch.empty(0)])
                                    for label in local.features},
                          skips=SkipLedger.merged(p.skips.state_dict() for p in present))
    for piece in present:
        merged.labels += piece.labels
        merged.captions += piece.captions
        merged.keys += piece.keys
        merged.addresses += piece.addresses
    return merged


def _ordered(result: StreamResult, max_samples: Optional[int]) -> StreamResult:
    order = sorted(range(len(result.addresses)), key=result.addresses.__getitem__)
    if max_samples is not None:
        order = order[:max_samples]
    index = torch.tensor(order, dtype=torch.long)
    pick = (lambda values: [values[i] for i in order])
    return StreamResult(features={label: (f[index] if len(f) else f) for label, f in result.features.items()},
                        labels=pick(result.labels), captions=pick(result.captions), keys=pick(result.keys),
                        addresses=pick(result.addresses), skips=result.skips)


def fetch_records(source: Source, addresses: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Record]:
    """The records at `addresses` (unit index, position), read again: for a gallery's few images."""
    wanted: dict[int, set[int]] = {}
    for unit, position in addresses:
        wanted.setdefault(unit, set()).add(position)
    units = source.units()
    found: dict[tuple[int, int], Record] = {}
    for unit_index, positions in sorted(wanted.items()):
        for position, item in enumerate(source.read(units[unit_index])):
            if position in positions and isinstance(item, Record):
                found[(unit_index, position)] = item
            if position >= max(positions):
                break
    return found
