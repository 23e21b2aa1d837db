"""A noisy copy of the demo's training data with known corruption, for measuring what curation removes.

`make_noisy_demo(data_root, out)` reads digits_train + shapes_train (the *base* samples) and writes one shard set
(prefix "noisy") plus `truth.json`, which says for every output key what it is:

- "clean": a base sample copied byte for byte.
- "swapped" (`swap_fraction` of the base samples): its .txt replaced by the .txt of another sample of the same
  set whose caption is wrong for this image: a digit of another label; a scene that shares no colour and no shape
  with this one (relaxed to no shared colour, then to any other scene, only where no such donor exists).
  `caption_source` names the donor.
- "exact_duplicate" / "near_duplicate" (`duplicate_fraction` x base count extra samples, half each): a copy of a
  clean base sample (every member, so its caption too); a near copy's image is shifted by one pixel with +-3 levels
  of noise and re-encoded as PNG. `of` is the output key of the original; no original is copied twice.
- "leak_exact" / "leak_near" (`leak`): every image of the sets the demo's zero-shot tasks evaluate on
  (digits_val, shapes_single_val), each once, with its caption: `near_leak_fraction` of them as near copies.

The demo data has such faults of its own: a base sample whose image is byte-identical to an evaluation image has
`natural: "exact_leak"`, and one identical to an earlier base image `natural: "exact_duplicate"` with `natural_of`
(the output key of the first); its kind is still what was done to it here ("clean" or "swapped").

Output keys are opaque (`n000000`...) and the samples shuffled, so neither names nor order tell the kinds apart;
`source` in truth.json is "set/key" of the input sample the image comes from. Everything but perturbed images is
copied member by member as bytes. The same inputs and seed write the same bytes.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmpretrain.data.decode import IMAGE_EXTENSIONS
from mmpretrain.data.safe_tar import EVERY_MEMBER, ShardFailure, read_shard
from mmpretrain.data.shard_writer import ShardWriter
from mmpretrain.data.shards import expand_shards

BASE_SETS = ("digits_train", "shapes_train")
EVAL_SETS = ("digits_val", "shapes_single_val")  # the images of configs/demo.yaml's image zero-shot tasks
TRUTH_FILE = "truth.json"
KINDS = ("clean", "swapped", "exact_duplicate", "near_duplicate", "leak_exact", "leak_near")
_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
_SHAPES = ("circle", "square", "triangle", "diamond")


def _read_set(folder: Path, name: str) -> list[dict[str, Any]]:
    """Every sample of a shard set as {"source": "name/key", "members": {ext: bytes}}, in shard order."""
    samples = []
    for shard in expand_shards(str(folder)):
        for item in read_shard(shard, EVERY_MEMBER):
            if isinstance(item, ShardFailure) or "__oversized__" in item:
                raise ValueError(f"{shard}: cannot copy it whole ({item})")
            members = {k: bytes(v) for k, v in item.items() if not k.startswith("__")}
            samples.append({"source": f"{name}/{item['__key__']}", "members": members})
    return samples


def _image_ext(members: dict[str, bytes]) -> str:
    return next(ext for ext in IMAGE_EXTENSIONS if ext in members)


def _masks(members: dict[str, bytes]) -> tuple[int, int]:
    """What a caption can be wrong about, as bit masks: (label or colours, shapes) of the image."""
    meta = json.loads(members.get("json", b"{}"))
    if "label" in meta:
        return 1 << int(meta["label"]), 0
    colours = shapes = 0  # OR, not sum: two circles are one bit
    for o in meta.get("objects", []):
        colours |= 1 << _COLOURS.index(o["colour"]) if o.get("colour") in _COLOURS else 0
        shapes |= 1 << _SHAPES.index(o["shape"]) if o.get("shape") in _SHAPES else 0
    return colours, shapes


def _donor(i: int, group: list[int], masks: np.ndarray, rng: random.Random) -> int:
    """A sample of `group` (base indices of one set) whose caption is as wrong as possible for sample i."""
    a, b = masks[group, 0], masks[group, 1]
    not_self = np.asarray(group) != i
    for ok in (((a & masks[i, 0]) == 0) & ((b & masks[i, 1]) == 0), (a & masks[i, 0]) == 0, np.ones_like(not_self)):
        eligible = np.flatnonzero(ok & not_self)
        if len(eligible):
            return group[int(eligible[rng.randrange(len(eligible))])]
    raise ValueError(f"no other sample to take a caption from for {i}")


def perturb_image(image: bytes, seed: int) -> bytes:
    """A near copy: shifted by one pixel (edges repeated), +-3 levels of noise, re-encoded as PNG."""
    pixels = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), dtype=np.int16)
    gen = np.random.default_rng(seed)
    dy, dx = [(1, 0), (-1, 0), (0, 1), (0, -1)][int(gen.integers(4))]
    h, w = pixels.shape[:2]
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    shifted = padded[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
    noisy = np.clip(shifted + gen.integers(-3, 4, size=shifted.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _near(sample: dict[str, Any], seed: int) -> dict[str, bytes]:
    members = {k: v for k, v in sample["members"].items() if k not in IMAGE_EXTENSIONS}
    members["png"] = perturb_image(sample["members"][_image_ext(sample["members"])], seed)
    return members


def make_noisy_demo(data_root: Path, out: Path, seed: int = 0, swap_fraction: float = 0.3,
                    duplicate_fraction: float = 0.1, leak: bool = True, near_leak_fraction: float = 0.25,
                    samples_per_shard: int = 500) -> dict[str, Any]:
    """Write the noisy shard set and truth.json to `out` (which must hold no "noisy-*" shards); return the
    summary stored in truth.json (everything but the per-sample table)."""
    data_root, out = Path(data_root), Path(out)
    base = [s for name in BASE_SETS for s in _read_set(data_root / name, name)]
    evals = [s for name in EVAL_SETS for s in _read_set(data_root / name, name)]
    n_base = len(base)
    n_swap, n_dup = round(swap_fraction * n_base), round(duplicate_fraction * n_base)
    if not 0 <= n_swap + n_dup <= n_base:
        raise ValueError(f"swap_fraction + duplicate_fraction must be within [0, 1], got {n_swap + n_dup}/{n_base}")
    rng = random.Random(f"noisy-demo-{seed}")
    order = rng.sample(range(n_base), n_base)
    swapped, clean = sorted(order[:n_swap]), order[n_swap:]
    masks = np.array([_masks(s["members"]) for s in base], dtype=np.int64)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(base):
        groups.setdefault(s["source"].split("/")[0], []).append(i)

    # A record: the members to write, its kind, the base index it copies (duplicates), the caption's donor.
    records: list[dict[str, Any]] = [{"members": s["members"], "kind": "clean", "source": s["source"]} for s in base]
    eval_images, first = {s["members"][_image_ext(s["members"])] for s in evals}, {}
    for i, s in enumerate(base):
        image = s["members"][_image_ext(s["members"])]
        if image in eval_images:
            records[i]["natural"] = "exact_leak"
        elif image in first:
            records[i].update(natural="exact_duplicate", natural_of_index=first[image])
        first.setdefault(image, i)
    for i in swapped:
        donor = _donor(i, groups[base[i]["source"].split("/")[0]], masks, rng)
        records[i].update(members={**base[i]["members"], "txt": base[donor]["members"]["txt"]}, kind="swapped",
                          caption_source=base[donor]["source"])
    originals = rng.sample(clean, n_dup)
    for j, i in enumerate(originals):
        exact = j < (n_dup + 1) // 2
        members = dict(base[i]["members"]) if exact else _near(base[i], seed * 1_000_003 + i)
        records.append({"members": members, "kind": "exact_duplicate" if exact else "near_duplicate",
                        "source": base[i]["source"], "of_index": i})
    if leak:
        n_near = round(near_leak_fraction * len(evals))
        near = set(rng.sample(range(len(evals)), n_near))
        for j, s in enumerate(evals):
            records.append({"members": _near(s, seed * 1_000_003 + n_base + j) if j in near else dict(s["members"]),
                            "kind": "leak_near" if j in near else "leak_exact", "source": s["source"]})

    positions = rng.sample(range(len(records)), len(records))  # output order; keys follow it
    keys = {r: f"n{pos:06d}" for pos, r in enumerate(positions)}
    samples: dict[str, dict[str, Any]] = {}
    with ShardWriter(out, samples_per_shard, prefix="noisy") as writer:
        for r in positions:
            record = records[r]
            members = record["members"]
            ext = _image_ext(members)
            extra = {k: v for k, v in members.items() if k not in (ext, "txt")}
            writer.write(keys[r], members[ext], ext, members["txt"].decode("utf-8"), None, extra)
            truth = {k: v for k, v in record.items() if k != "members" and not k.endswith("_index")}
            truth.update({k[:-len("_index")]: keys[v] for k, v in record.items() if k.endswith("_index")})
            samples[keys[r]] = truth
    summary = {"seed": seed, "swap_fraction": swap_fraction, "duplicate_fraction": duplicate_fraction,
               "leak": leak, "near_leak_fraction": near_leak_fraction, "base_samples": n_base,
               "total": len(records), "counts": {k: n for k, n in sorted(Counter(r["kind"] for r in records).items())},
               "natural": dict(sorted(Counter(r["natural"] for r in records if "natural" in r).items())),
               "shards": [p.name for p in writer.shards]}
    (out / TRUTH_FILE).write_text(json.dumps({**summary, "samples": samples}, indent=0, sort_keys=True) + "\n")
    return summary


def load_truth(out: Path) -> dict[str, Any]:
    """truth.json of a noisy set: the summary plus `samples`, key -> {kind, source, [of], [caption_source],
    [natural], [natural_of]}."""
    return json.loads((Path(out) / TRUTH_FILE).read_text())
