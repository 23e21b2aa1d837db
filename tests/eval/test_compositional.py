"""Compositional eval: the published formats read from tiny files written here, parity with clip_benchmark's
sugar_crepe, Winoground's three scores by hand, counted skips, and one-line config errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.datasets.sugar_crepe import SugarCrepe
from clip_benchmark.metrics import image_caption_selection
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from mmpretrain.errors import ConfigError, DataError
from mmpretrain.eval.compositional import read_compositional
from mmpretrain.eval.compositional.shuffles import order_negatives
from mmpretrain.eval.harness import EvalConfig, EvalTaskConfig, check_task_data, run_eval
from tests.eval.fakes import ToneModel, colour_tokens, first_pixel, png, write_samples
from tests.conftest import COLOURS
from tests.test_eval_harness import tiny_clip  # noqa: F401  (the fixture: a tiny open_clip model, wrapped)


def _noise_png(path: Path, seed: int, size: int = 40) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


NOUNS = ["dog", "cat", "horse", "bird", "car", "boat", "man", "woman", "tree", "house"]
ADJECTIVES = ["red", "small", "wooden", "old", "bright", "wet", "striped", "tall"]


def _sugarcrepe(root: Path, subsets: dict[str, int], images: int = 9) -> None:
    """clip_benchmark's layout: root/<subset>.json and root/val2017/<filename>; ids non-contiguous, images shared."""
    for i in range(images):
        _noise_png(root / "val2017" / f"{i:012d}.png", seed=i)
    rng = np.random.default_rng(1)
    for subset, count in subsets.items():
        entries = {}
        for n in range(count):
            a, b = rng.choice(NOUNS, 2, replace=False)
            adj = rng.choice(ADJECTIVES)
            entries[str(3 * n + 7)] = {"filename": f"{int(rng.integers(images)):012d}.png",
                                       "caption": f"a {adj} {a} next to a {b}",
                                       "negative_caption": f"a {adj} {b} next to a {a}"}
        (root / f"{subset}.json").write_text(json.dumps(entries))


def test_sugarcrepe_matches_clip_benchmark(tmp_path: Path, tiny_clip) -> None:
    """Per subset, our acc equals clip_benchmark 1.6.2's `image_caption_selection` on its own SugarCrepe dataset.

    clip_benchmark autocasts by default (bf16 on CPU); it is run with amp=False so both sides are fp32. Its
    accuracy here is torch-only (`torch.Tensor(list).float().mean()`), so the numpy 2 breakage of its zero-shot
    accuracy() does not arise. Ties: it counts them as hits (argmax picks the positive, index 0), we as misses;
    the test checks that no pair is within 1e-4 of a tie, so the rule cannot decide any outcome here."""
    model, transform, tokenizer = tiny_clip
    clip = model.clip  # clip_benchmark calls open_clip's own encode_image / encode_text
    subsets = {"replace_obj": 14, "swap_att": 11}
    _sugarcrepe(tmp_path, subsets)
    config = EvalConfig(batch_size=4, tasks=[EvalTaskConfig(name="sc", kind="compositional", format="sugarcrepe",
                                                            data=str(tmp_path))])
    ours = run_eval(model, transform, tokenizer, config, progress=False)
    assert ours["compositional/sc/skipped"] == 0.0
    theirs = {}
    for subset in subsets:
        dataset = SugarCrepe(root=str(tmp_path / "val2017"), ann_file=str(tmp_path / f"{subset}.json"),
                             transform=transform)
        loader = DataLoader(dataset, batch_size=5, collate_fn=image_captions_collate_fn)
        theirs[subset] = image_caption_selection.evaluate(clip, loader, tokenizer, "cpu", amp=False)["acc"]
        assert ours[f"compositional/sc/{subset}/acc"] == pytest.approx(theirs[subset], abs=1e-6)
        # no near-ties: the tie rules cannot differ here
        for image, captions in dataset:
            with torch.no_grad():
                img = F.normalize(clip.encode_image(image[None]), dim=-1)
                txt = F.normalize(clip.encode_text(tokenizer(captions)), dim=-1)
            scores = (img @ txt.T)[0]
            assert abs(float(scores[0] - scores[1])) > 1e-4
    assert 0.0 < min(theirs.values()) and max(theirs.values()) < 1.0  # not a degenerate comparison
    assert ours["compositional/sc/acc"] == pytest.approx(sum(theirs.values()) / 2, abs=1e-6)


class ConstantTextCLIP(nn.Module):
    """A collapsed text tower: every caption embeds alike, so positive and negative always tie."""

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :4] + 1.0

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(x), 4)

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        out = self.encode_image(x) if modality == "image" else self.encode_text(x)
        return F.normalize(out, dim=-1)


def test_ties_are_misses_where_clip_benchmark_counts_them_as_hits(tmp_path: Path, tiny_clip) -> None:
    _, transform, tokenizer = tiny_clip
    _sugarcrepe(tmp_path, {"replace_att": 6})
    model = ConstantTextCLIP()
    config = EvalConfig(tasks=[EvalTaskConfig(name="sc", kind="compositional", format="sugarcrepe",
                                              data=str(tmp_path / "replace_att.json"))])
    assert run_eval(model, transform, tokenizer, config, progress=False)["compositional/sc/replace_att/acc"] == 0.0
    dataset = SugarCrepe(str(tmp_path / "val2017"), str(tmp_path / "replace_att.json"), transform=transform)
    loader = DataLoader(dataset, batch_size=4, collate_fn=image_captions_collate_fn)
    assert image_caption_selection.evaluate(model, loader, tokenizer, "cpu", amp=False)["acc"] == 1.0


def _half_png(path: Path, left: str, right: str, size: int = 20) -> None:
    image = Image.new("RGB", (size, size), COLOURS[left])
    image.paste(Image.new("RGB", (size // 2, size), COLOURS[right]), (size // 2, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _tone_task(**kwargs: Any) -> EvalConfig:
    # The blind text model's figures are the subject of their own test; these check the readers' accuracies
    return EvalConfig(batch_size=2, tasks=[EvalTaskConfig(name="t", kind="compositional", blind=False, **kwargs)])


def _run_tone(config: EvalConfig, **kwargs: Any) -> dict[str, float]:
    return run_eval(ToneModel(("image", "text")), first_pixel, colour_tokens, config, progress=False, **kwargs)


@pytest.mark.parametrize("format, kind", [("aro-relation", "relation"), ("aro-attribution", "attribute")])
def test_aro_reads_visual_genome_entries_and_crops_to_the_box(tmp_path: Path, format: str, kind: str) -> None:
    # Image 1: red left half, blue right half. The box on the right half makes the crop blue (its first pixel).
    _half_png(tmp_path / "images" / "1.jpg", "red", "blue")
    _half_png(tmp_path / "images" / "2.jpg", "green", "green")
    base = {"bbox_y": 0, "bbox_h": 20}
    entries = [
        {"image_path": "1.jpg", "bbox_x": 10, "bbox_w": 10, "true_caption": "the blue one",
         "false_caption": "the red one", **base},                      # right only if cropped
        {"image_id": 1, "bbox_x": 0, "bbox_w": 10, "true_caption": "the red one",
         "false_caption": "the blue one", **base},                     # image_id -> 1.jpg; left half
        {"image_path": "2.jpg", "bbox_x": 0, "bbox_w": 20, "true_caption": "the red one",
         "false_caption": "the green one", **base},                    # a miss
        {"image_path": "2.jpg", "bbox_x": 0, "bbox_w": 20, "true_caption": "the green one",
         "false_caption": "the green thing", **base},                  # a tie: a miss
    ]
    extra = {"relation_name": "on"} if kind == "relation" else {"attributes": ["blue", "red"]}
    (tmp_path / "ann.json").write_text(json.dumps([{**e, **extra} for e in entries]))
    results = _run_tone(_tone_task(format=format, data=str(tmp_path / "ann.json"), images=str(tmp_path / "images")))
    assert results == {f"compositional/t/{kind}/acc": 0.5, "compositional/t/acc": 0.5,
                       "compositional/t/skipped": 0.0}


def _group_png(path: Path, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (index * 10, 0, 0)).save(path)


# s[c][i]: caption c against image i, per group, and the expected (text, image, group) outcome.
GROUPS = [
    ([[0.9, 0.1], [0.2, 0.8]], (True, True, True)),
    ([[0.5, 0.6], [0.4, 0.9]], (True, False, False)),   # c0 prefers i1: image score fails
    ([[0.5, 0.4], [0.6, 0.7]], (False, True, False)),   # i0 prefers c1: text score fails
    ([[0.5, 0.5], [0.5, 0.5]], (False, False, False)),  # all tied: nothing is preferred
]


class TableModel(nn.Module):
    """Image k (red channel 10 k) embeds to e_k; caption j to row j of `table`, so similarities are set exactly."""

    modalities = ["image", "text"]

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if modality == "image":
            return F.one_hot((x[:, 0] / 10).round().long(), self.table.shape[1]).float()
        return self.table[x]


def test_winoground_text_image_and_group_scores_match_hand_computed_values(tmp_path: Path) -> None:
    captions, rows, examples = [], [], []
    for g, (s, _) in enumerate(GROUPS):
        for i in (0, 1):
            _group_png(tmp_path / "images" / f"ex_{g}_img_{i}.png", 2 * g + i)
        for c in (0, 1):
            captions.append(f"group {g} caption {c}")
            row = torch.zeros(2 * len(GROUPS))
            row[2 * g], row[2 * g + 1] = s[c][0], s[c][1]
            rows.append(row)
        examples.append({"id": g, "caption_0": captions[-2], "caption_1": captions[-1],
                         "image_0": f"ex_{g}_img_0", "image_1": f"ex_{g}_img_1", "tag": "Object"})
    (tmp_path / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    config = _tone_task(format="winoground", data=str(tmp_path / "examples.jsonl"), images=str(tmp_path / "images"))
    results = run_eval(TableModel(torch.stack(rows)), first_pixel,
                       lambda texts: torch.tensor([captions.index(t) for t in texts]), config, progress=False,
                       blind_scorer=lambda p, n: True)  # no blind score for Winoground: captions pair with images
    expected = [sum(o[k] for _, o in GROUPS) / len(GROUPS) for k in range(3)]
    assert expected == [0.5, 0.5, 0.25]
    assert results == {"compositional/t/text/acc": 0.5, "compositional/t/image/acc": 0.5,
                       "compositional/t/group/acc": 0.25, "compositional/t/acc": 0.25,
                       "compositional/t/skipped": 0.0}


def test_shards_read_typed_negatives_and_report_blind_accuracy_beside_each_type(tmp_path: Path) -> None:
    samples: list[dict[str, object]] = []
    for colour, other in (("red", "blue"), ("green", "red"), ("blue", "green"), ("red", "green")):
        negatives = [{"text": f"a {other} square", "type": "replace_col"},
                     {"text": f"a {colour} circle", "type": "replace_shape"}]  # same colour: a tie, a miss
        samples.append({"png": png(COLOURS[colour]), "txt": f"a {colour} square\nanother caption",
                        "neg.json": json.dumps(negatives)})
    samples.append({"png": png(COLOURS["blue"]), "txt": "a blue square", "neg.json": json.dumps(["a red square"])})
    samples.append({"png": png(COLOURS["blue"]), "txt": "a blue square", "neg.json": "not json"})
    samples.append({"png": png(COLOURS["blue"]), "txt": "a blue square"})  # no negatives
    write_samples(tmp_path / "shards", samples)
    config = _tone_task(format="shards", data=str(tmp_path / "shards"))
    calls: list[tuple[str, str]] = []

    def blind(positive: str, negative: str) -> bool:  # "knows" circles are wrong, nothing else
        calls.append((positive, negative))
        return "circle" in negative

    results = _run_tone(config, blind_scorer=blind)
    assert results == {
        "compositional/t/negative/acc": 1.0, "compositional/t/negative/blind_acc": 0.0,
        "compositional/t/replace_col/acc": 1.0, "compositional/t/replace_col/blind_acc": 0.0,
        "compositional/t/replace_shape/acc": 0.0, "compositional/t/replace_shape/blind_acc": 1.0,
        "compositional/t/acc": pytest.approx(2 / 3), "compositional/t/blind_acc": pytest.approx(1 / 3),
        "compositional/t/skipped": 2.0,
    }
    assert ("a red square", "a blue square") in calls
    kept = _run_tone(_tone_task(format="shards", data=str(tmp_path / "shards"), subsets=["replace_shape"]))
    assert {k for k in kept if k.endswith("/acc")} == {"compositional/t/replace_shape/acc", "compositional/t/acc"}
    assert kept["compositional/t/skipped"] == 3.0  # 2 bad + the one with no replace_shape negative


def test_order_formats_make_trigram_shuffles_or_take_given_negatives(tmp_path: Path) -> None:
    _half_png(tmp_path / "images" / "val2014" / "a.jpg", "red", "red")
    entries = [
        {"image": "val2014/a.jpg", "image_id": 1,
         "caption": ["A red dog runs across the green field.", "A Red bird sits on a blue branch!"]},
        {"image": "val2014/a.jpg", "caption": "a red car", "negatives": [{"text": "red a car", "type": "manual"},
                                                                         "car red a"]},
    ]
    (tmp_path / "karpathy.json").write_text(json.dumps(entries))
    data = read_compositional("coco-order", str(tmp_path / "karpathy.json"), str(tmp_path / "images"))
    assert len(data.images) == 1 and len(data.choices) == 3 and data.joint_type == "order"
    first = data.choices[0]
    assert first.positive == "a red dog runs across the green field"  # ARO's pre_caption
    assert [t for _, t in first.negatives] == ["shuffle_trigrams", "shuffle_within_trigrams"]
    for text, _ in first.negatives:
        assert sorted(text.split()) == sorted(first.positive.split()) and text != first.positive
    assert first.negatives == order_negatives(first.positive)  # the same on every read
    assert data.choices[2].negatives == [("red a car", "manual"), ("car red a", "order")]
    results = _run_tone(_tone_task(format="flickr-order", data=str(tmp_path / "karpathy.json"),
                                   images=str(tmp_path / "images"), subsets=["shuffle_trigrams", "order"]))
    # the colour model cannot see word order: every shuffle ties, so every one is a miss
    assert results == {"compositional/t/order/acc": 0.0, "compositional/t/shuffle_trigrams/acc": 0.0,
                       "compositional/t/acc": 0.0, "compositional/t/skipped": 0.0}


def test_bad_entries_and_images_are_counted_skips(tmp_path: Path) -> None:
    for name, colour in (("red", "red"), ("blue", "blue")):
        (tmp_path / "val2017").mkdir(exist_ok=True)
        (tmp_path / "val2017" / f"{name}.png").write_bytes(png(COLOURS[colour], size=64))
    (tmp_path / "val2017" / "junk.png").write_bytes(b"not an image")
    data = png(COLOURS["red"], size=64)
    (tmp_path / "val2017" / "truncated.png").write_bytes(data[: len(data) // 2])  # header fine, pixels not
    (tmp_path / "outside.png").write_bytes(png(COLOURS["red"]))
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "b1").write_bytes(png(COLOURS["blue"], size=64))
    (tmp_path / "val2017" / "linked.png").symlink_to(tmp_path / "blobs" / "b1")  # a Hugging Face cache's layout
    good = {"caption": "a red square", "negative_caption": "a blue square"}
    entries = {
        "1": {"filename": "red.png", **good},
        "2": {"filename": "blue.png", "caption": "a blue square", "negative_caption": "a green square"},
        "3": {"filename": "missing.png", **good},
        "4": {"filename": "junk.png", **good},
        "5": {"filename": "truncated.png", **good},
        "6": {"filename": "../outside.png", **good},
        "7": {"filename": "red.png", "caption": "a red square"},
        "8": ["not", "an", "object"],
        "9": {"filename": "linked.png", "caption": "a blue square", "negative_caption": "a red square"},
        "10": {"filename": "/abs/red.png", **good},
    }
    (tmp_path / "replace_att.json").write_text(json.dumps(entries))
    read = read_compositional("sugarcrepe", str(tmp_path))
    assert dict(read.skips.by_reason) == {"image_missing": 3, "image_unreadable": 1, "negatives_invalid": 1,
                                          "label_invalid": 1}
    assert read.skips.delivered == 4
    results = _run_tone(_tone_task(format="sugarcrepe", data=str(tmp_path)))
    assert results == {"compositional/t/replace_att/acc": 1.0, "compositional/t/acc": 1.0,
                       "compositional/t/skipped": 7.0}  # the truncated image is found when decoded
    (tmp_path / "replace_att.json").write_text(json.dumps({"3": entries["3"]}))
    with pytest.raises(DataError, match="compositional/t: no usable sample .*image_missing 1"):
        _run_tone(_tone_task(format="sugarcrepe", data=str(tmp_path)))


def test_broken_annotation_files_fail_the_task_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"aro-relation: .*bad.json is not readable JSON"):
        read_compositional("aro-relation", str(tmp_path / "bad.json"), str(tmp_path / "images"))
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(DataError, match="winoground: .*not Winoground's examples"):
        read_compositional("winoground", str(tmp_path / "obj.json"), str(tmp_path / "images"))
    failures: dict[str, str] = {}
    results = run_eval(ToneModel(("image", "text")), first_pixel, colour_tokens,
                       _tone_task(format="coco-order", data=str(tmp_path / "bad.json"), images=str(tmp_path)),
                       progress=False, failures=failures)
    assert results == {"compositional/t/failed": 1.0}
    assert "\n" not in failures["compositional/t"] and "not readable JSON" in failures["compositional/t"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="compositional", data="x"), "'c'.*needs format, one of sugarcrepe, aro-relation"),
    (dict(kind="compositional", data="x", format="crepe"), "needs format.*got 'crepe'"),
    (dict(kind="compositional", data="x", format="aro-relation"), "format aro-relation needs images"),
    (dict(kind="compositional", data="x", format="shards", images="y"), "images must be unset"),
    (dict(kind="compositional", data="x", format="winoground", images="y", subsets=["text"]),
     "subsets is for formats sugarcrepe"),
    (dict(kind="compositional", data="x", format="sugarcrepe", subsets=["a/b"]), "subsets must be type names"),
    (dict(kind="compositional", data="x", format="sugarcrepe", classnames=["a"]),
     "classnames is not a compositional task's key"),
    (dict(kind="zeroshot", data="x", classnames=["a"], templates=["{}"], format="sugarcrepe"),
     "format is for compositional tasks"),
    (dict(kind="retrieval", data="x", images="y", subsets=["a"]), "images, subsets are for compositional tasks"),
    (dict(kind="nope", data="x"), "kind must be 'zeroshot', 'retrieval' or 'compositional'"),
])
def test_config_errors_are_one_line_naming_the_task(kwargs: dict[str, Any], message: str) -> None:
    config = EvalConfig(tasks=[EvalTaskConfig(name="c", **kwargs)])
    with pytest.raises(ConfigError, match=message) as err:
        config.validate()
    assert "\n" not in str(err.value)


def test_missing_files_are_found_when_training_starts(tmp_path: Path) -> None:
    _sugarcrepe(tmp_path, {"replace_obj": 2})
    ok = EvalConfig(tasks=[EvalTaskConfig(name="sc", kind="compositional", format="sugarcrepe", data=str(tmp_path),
                                          subsets=["replace_obj"])])
    check_task_data(ok, towers=["image", "text"])
    ok.tasks[0].subsets = ["swap_obj"]
    with pytest.raises(FileNotFoundError, match="'sc': SugarCrepe subset file .*swap_obj.json does not exist"):
        check_task_data(ok)
    ok.tasks[0].subsets = []
    with pytest.raises(ConfigError, match=r"'sc'.*compositional \(image-text\) needs the text tower"):
        check_task_data(ok, towers=["image", "audio"])
    aro = EvalConfig(tasks=[EvalTaskConfig(name="aro", kind="compositional", format="aro-relation",
                                           data=str(tmp_path / "replace_obj.json"), images=str(tmp_path / "vg"))])
    with pytest.raises(FileNotFoundError, match="'aro': image folder .*vg does not exist"):
        check_task_data(aro)


def test_compositional_tasks_load_from_yaml() -> None:
    schema = OmegaConf.structured(EvalConfig)
    merged = OmegaConf.merge(schema, {"tasks": [{"name": "sc", "kind": "compositional", "format": "sugarcrepe",
                                                 "data": "/data/sugar_crepe", "subsets": ["replace_obj"]}]})
    task = OmegaConf.to_object(merged).tasks[0]
    assert (task.kind, task.format, task.images, task.subsets) == ("compositional", "sugarcrepe", None,
                                                                   ["replace_obj"])
    task.validate()


def test_a_compositional_task_reports_what_a_blind_text_model_gets_by_default():
    """`blind: true` (the default): beside each type's accuracy, the accuracy of a trigram model of the set's own
    positives that never sees the image: a type it gets right every time is given away by its text."""
    from mmpretrain.eval.compositional.data import ChoiceItem, CompositionalData
    from mmpretrain.eval.harness import set_blind_scorer

    positives = [f"a {c} {s} left of a {d} {t}" for c in ("red", "blue", "green") for d in ("red", "blue")
                 for s in ("square", "circle") for t in ("square", "circle") if c != d]
    items = [ChoiceItem(0, p, [(p.replace(" left of ", " "), "garbled"), (p.replace(" a ", " the ", 1), "article")])
             for p in positives]
    scorer = set_blind_scorer(CompositionalData(images=[], choices=items))
    garbled = sum(scorer(item.positive, item.negatives[0][0]) for item in items) / len(items)
    assert garbled == 1.0  # a dropped relation is text-detectable: the blind model always prefers the positive
    assert scorer("a red square left of a blue circle", "a red square left of a blue circle") is False  # ties miss
