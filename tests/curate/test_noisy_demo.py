"""The noisy demo set: the corruption it claims in truth.json is the corruption in its shards, reproducibly."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmpretrain.curate.noisy_demo import KINDS, _read_set, load_truth, make_noisy_demo
from mmpretrain.data.demo_data import render_scene, sample_scene, scene_caption
from mmpretrain.data.shard_writer import ShardWriter
from mmpretrain.data.shards import read_sizes, expand_shards

SIZES = {"digits_train": 30, "shapes_train": 60, "digits_val": 10, "shapes_single_val": 12}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo root: the demo's four sets that the noisy set reads, a few dozen samples each. Training digit 0
    has the image of validation digit 0, and training digit 2 that of training digit 1 (faults of the data itself)."""
    root = tmp_path_factory.mktemp("demo")
    rng = random.Random(0)
    for name, n in SIZES.items():
        with ShardWriter(root / name, 16, prefix=name.split("_")[0]) as writer:
            for i in range(n):
                key, sound = f"{name.replace('_', '')}{i:04d}", rng.randbytes(64)
                if name.startswith("digits"):
                    label = i % 10
                    image_seed = i if name == "digits_val" else {0: 0, 2: 1001}.get(i, 1000 + i)
                    pixels = np.random.default_rng(image_seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    writer.write(key, _png(Image.fromarray(pixels)), "png", [f"the number {label}", f"a {label}"],
                                 {"label": label, "dataset": "digits"}, extra={"flac": sound})
                else:
                    objects = sample_scene(rng, 1 if name.endswith("val") else 1 + i % 3)
                    meta = {"dataset": "shapes", "objects": [vars(o) for o in objects]}
                    writer.write(key, _png(render_scene(objects)), "png", scene_caption(objects, rng, True), meta,
                                 extra={"flac": sound})
    return root


_SHIFTS = [(1, 0), (-1, 0), (0, 1), (0, -1)]


def _shift_error(near: np.ndarray, orig: np.ndarray, shift: tuple[int, int]) -> int:
    """Largest pixel difference between `near` and `orig` moved by (dy, dx), edges repeated."""
    (dy, dx), (h, w) = shift, orig.shape[:2]
    padded = np.pad(orig, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return int(np.abs(near - padded[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]).max())


def _by_source(root: Path) -> dict[str, dict[str, bytes]]:
    return {s["source"]: s["members"] for name in SIZES for s in _read_set(root / name, name)}


@pytest.fixture(scope="module")
def noisy(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("noisy")
    make_noisy_demo(demo_root, out, seed=0, samples_per_shard=20)
    return out


def test_counts_and_fractions(noisy: Path) -> None:
    truth = load_truth(noisy)
    n_base, n_eval = SIZES["digits_train"] + SIZES["shapes_train"], SIZES["digits_val"] + SIZES["shapes_single_val"]
    counts = {kind: sum(s["kind"] == kind for s in truth["samples"].values()) for kind in KINDS}
    assert counts == {k: truth["counts"].get(k, 0) for k in KINDS}
    assert counts["swapped"] == round(0.3 * n_base)
    assert counts["exact_duplicate"] + counts["near_duplicate"] == round(0.1 * n_base)
    assert abs(counts["exact_duplicate"] - counts["near_duplicate"]) <= 1
    assert counts["leak_exact"] + counts["leak_near"] == n_eval and counts["leak_near"] == round(0.25 * n_eval)
    assert counts["clean"] + counts["swapped"] == n_base
    written = _read_set(noisy, "noisy")
    keys = [s["source"].split("/")[1] for s in written]
    assert sorted(keys) == sorted(truth["samples"]) and len(set(keys)) == len(keys) == truth["total"]
    assert not any("." in k or "/" in k for k in keys)
    assert read_sizes(expand_shards(str(noisy))) == truth["total"]


def test_every_base_and_eval_sample_is_used_once(noisy: Path, demo_root: Path) -> None:
    samples = load_truth(noisy)["samples"].values()
    firsts = [s["source"] for s in samples if s["kind"] in ("clean", "swapped", "leak_exact", "leak_near")]
    assert sorted(firsts) == sorted(_by_source(demo_root))
    dups = [s["of"] for s in samples if "duplicate" in s["kind"]]
    assert len(set(dups)) == len(dups)


def test_members_match_their_sources(noisy: Path, demo_root: Path) -> None:
    truth, sources = load_truth(noisy)["samples"], _by_source(demo_root)
    written = {s["source"].split("/")[1]: s["members"] for s in _read_set(noisy, "noisy")}
    for key, members in written.items():
        t, source = truth[key], sources[truth[key]["source"]]
        assert set(members) == set(source)
        if t["kind"] in ("clean", "exact_duplicate", "leak_exact"):
            assert members == source  # byte for byte, every member
        elif t["kind"] in ("near_duplicate", "leak_near"):
            assert members["png"] != source["png"] and {k: v for k, v in members.items() if k != "png"} == {
                k: v for k, v in source.items() if k != "png"}
            near, orig = (np.asarray(Image.open(io.BytesIO(m["png"])).convert("RGB"), dtype=int)
                          for m in (members, source))
            assert near.shape == orig.shape and min(_shift_error(near, orig, d) for d in _SHIFTS) <= 3
        if "duplicate" in t["kind"]:
            assert truth[t["of"]]["kind"] == "clean" and truth[t["of"]]["source"] == t["source"]
            assert written[t["of"]]["png"] == source["png"]


def test_swapped_captions_are_wrong_for_the_image(noisy: Path, demo_root: Path) -> None:
    sources = _by_source(demo_root)
    written = {s["source"].split("/")[1]: s["members"] for s in _read_set(noisy, "noisy")}
    swapped = [(k, t) for k, t in load_truth(noisy)["samples"].items() if t["kind"] == "swapped"]
    assert swapped
    for key, t in swapped:
        own, donor = sources[t["source"]], sources[t["caption_source"]]
        assert written[key]["txt"] == donor["txt"] != own["txt"]
        assert {k: v for k, v in written[key].items() if k != "txt"} == {k: v for k, v in own.items() if k != "txt"}
        a, b = json.loads(own["json"]), json.loads(donor["json"])
        assert a["dataset"] == b["dataset"]
        if "label" in a:
            assert a["label"] != b["label"]
        else:  # no colour and no shape of the donor's scene is in this one
            assert not {o["colour"] for o in a["objects"]} & {o["colour"] for o in b["objects"]}
            assert not {o["shape"] for o in a["objects"]} & {o["shape"] for o in b["objects"]}


def test_same_seed_same_bytes_other_seed_other_set(demo_root: Path, noisy: Path, tmp_path: Path) -> None:
    make_noisy_demo(demo_root, tmp_path / "again", seed=0, samples_per_shard=20)
    names = sorted(p.name for p in noisy.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in names:
        assert (noisy / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    make_noisy_demo(demo_root, tmp_path / "other", seed=1, samples_per_shard=20)
    assert (tmp_path / "other" / "truth.json").read_bytes() != (noisy / "truth.json").read_bytes()


def test_no_leak_and_refusals(demo_root: Path, tmp_path: Path) -> None:
    summary = make_noisy_demo(demo_root, tmp_path / "a", leak=False, swap_fraction=0.0, duplicate_fraction=0.0)
    assert summary["counts"] == {"clean": SIZES["digits_train"] + SIZES["shapes_train"]}
    with pytest.raises(ValueError, match="within"):
        make_noisy_demo(demo_root, tmp_path / "b", swap_fraction=0.8, duplicate_fraction=0.3)
    with pytest.raises(FileExistsError):
        make_noisy_demo(demo_root, tmp_path / "a", leak=False)


def test_faults_of_the_data_itself_are_marked(noisy: Path) -> None:
    truth = load_truth(noisy)
    natural = {t["source"]: t for t in truth["samples"].values() if "natural" in t}
    assert set(natural) == {"digits_train/digitstrain0000", "digits_train/digitstrain0002"}
    assert natural["digits_train/digitstrain0000"]["natural"] == "exact_leak"
    dup = natural["digits_train/digitstrain0002"]
    assert dup["natural"] == "exact_duplicate" and truth["samples"][dup["natural_of"]]["source"].endswith("0001")
    assert truth["natural"] == {"exact_duplicate": 1, "exact_leak": 1}
