"""Benchmark sources read from files on disk: torchvision datasets (fakes written here in torchvision's own
on-disk formats, records compared with torchvision's own classes), Karpathy-split JSON (compared with a naive
reading), the shipped class names, the template sets and the suite files."""

from __future__ import annotations

import inspect
import io
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets
from omegaconf import OmegaConf
from PIL import Image

from mmpretrain.benchmark.classnames import load_classnames, shipped_classnames
from mmpretrain.eval.sources import Record
from mmpretrain.benchmark.sources_files import (TORCHVISION_DATASETS, KarpathySource, TorchvisionSource,
                                                torchvision_data_missing, torchvision_dataset_name)
from mmpretrain.data.skips import SKIP_REASONS, SkipEvent
from mmpretrain.errors import ConfigError, DataError
from mmpretrain.eval.templates import TEMPLATE_SETS, fill_template

REPO = Path(__file__).resolve().parents[2]
SUITES = REPO / "configs" / "suites"


# ---------------------------------------------------------------------------------------------------------------
# Fake datasets in torchvision's on-disk formats


def _pixels(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_cifar10(root: Path, n_test: int = 23, seed: int = 0) -> None:
    """cifar-10-batches-py: five training batches, a test batch and batches.meta, pickled as the original."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": 3 for i in range(1, 6)} | {"test_batch": n_test}
    for name, n in batches.items():
        entry = {"data": _pixels(rng, n, (3 * 32 * 32,)), "labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def _idx(data: np.ndarray) -> bytes:
    """The MNIST idx format: a big-endian magic (0x08 = uint8, then the number of dimensions), the sizes, the data."""
    header = np.array([0x0800 + data.ndim, *data.shape], dtype=">i4").tobytes()
    return header + data.astype(np.uint8).tobytes()


def write_mnist(root: Path, folder: str = "MNIST", n_test: int = 17, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 4), ("t10k", n_test)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(_pixels(rng, n, (28, 28))))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(rng.integers(0, 10, n).astype(np.uint8)))


def write_svhn(root: Path, n: int = 9, seed: int = 2) -> None:
    """test_32x32.mat: X is 32x32x3xN, y is Nx1 with 10 standing for the digit 0."""
    import scipy.io

    rng = np.random.default_rng(seed)
    labels = np.array([10, 1, 2, 3, 4, 5, 6, 7, 8][:n] + [10] * max(0, n - 9), dtype=np.uint8).reshape(-1, 1)
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "test_32x32.mat", {"X": _pixels(rng, 32, (32, 3, n)), "y": labels})


def write_dtd(root: Path, corrupt: str = "") -> list[str]:
    """dtd/dtd/images/<class>/<file> and labels/test1.txt listing `class/file` (the file's classes, sorted, are
    the labels). `corrupt` names a file written as bytes that are no image."""
    base = root / "dtd" / "dtd"
    lines = []
    for cls, colour in (("banded", (200, 20, 20)), ("zigzagged", (20, 200, 20)), ("dotted", (20, 20, 200))):
        (base / "images" / cls).mkdir(parents=True)
        for i in range(3):
            name = f"{cls}_{i:04d}.jpg"
            path = base / "images" / cls / name
            if name == corrupt:
                path.write_bytes(b"not a jpeg")
            else:
                Image.new("RGB", (40 + i, 36), colour).save(path, format="JPEG")
            lines.append(f"{cls}/{name}")
    (base / "labels").mkdir()
    (base / "labels" / "test1.txt").write_text("\n".join(lines) + "\n")
    return lines


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision checks the MD5 of CIFAR's and SVHN's files against the real datasets': our fakes only exist."""
    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    for module in (torchvision.datasets.cifar, torchvision.datasets.svhn, torchvision.datasets.stl10):
        monkeypatch.setattr(module, "check_integrity", exists)


def read_all(source) -> tuple[list[Record], list[SkipEvent], list[tuple[int, int]]]:
    records, skips, units = [], [], source.units()
    for unit in units:
        for item in source.read(unit):
            (skips if isinstance(item, SkipEvent) else records).append(item)
    return records, skips, units


def assert_same_as_torchvision(records: list[Record], reference, name: str, split: str) -> None:
    """Each record is torchvision's item at its index: the same pixels and the same integer target."""
    for record in records:
        index = int(record.key.rsplit("/", 1)[1])
        assert record.key == f"{name}/{split}/{index}"
        image, target = reference[index]
        assert isinstance(record.image, Image.Image) and record.image.mode == image.mode
        np.testing.assert_array_equal(np.asarray(record.image), np.asarray(image))
        assert type(record.label) is int and record.label == target


# ---------------------------------------------------------------------------------------------------------------
# TorchvisionSource


def test_cifar10_records_are_torchvisions_items_and_units_cover_every_index_once(tmp_path, no_md5):
    write_cifar10(tmp_path)
    source = TorchvisionSource("cifar10", str(tmp_path), "test")
    source.per_unit = 5
    records, skips, units = read_all(source)
    assert units == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert not skips and [int(r.key.rsplit("/", 1)[1]) for r in records] == list(range(23))
    reference = torchvision.datasets.CIFAR10(str(tmp_path), train=False)
    assert_same_as_torchvision(records, reference, "cifar10", "test")
    assert source.classnames == reference.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                       "frog", "horse", "ship", "truck"]
    assert source.kind == "zeroshot" and source.templates == []


def test_mnist_and_fashion_mnist_idx_files(tmp_path):
    write_mnist(tmp_path, "MNIST", n_test=17)
    write_mnist(tmp_path, "FashionMNIST", n_test=6, seed=3)
    mnist = TorchvisionSource("mnist", str(tmp_path))
    records, skips, units = read_all(mnist)
    assert len(records) == 17 and not skips and units == [(0, 17)]
    assert_same_as_torchvision(records, torchvision.datasets.MNIST(str(tmp_path), train=False), "mnist", "test")
    assert mnist.classnames == [str(d) for d in range(10)]  # the shipped numerals, not torchvision's "0 - zero"
    fashion = TorchvisionSource("FashionMNIST", str(tmp_path), "train")  # torchvision's spelling works too
    records, _, _ = read_all(fashion)
    assert len(records) == 4 and fashion.name == "fashion-mnist"
    assert_same_as_torchvision(records, torchvision.datasets.FashionMNIST(str(tmp_path), train=True),
                               "fashion-mnist", "train")
    assert fashion.classnames == torchvision.datasets.FashionMNIST.classes


def test_svhn_labels_read_ten_as_zero_and_use_the_shipped_names(tmp_path, no_md5):
    write_svhn(tmp_path, n=9)
    source = TorchvisionSource("svhn", str(tmp_path), "test")
    records, skips, _ = read_all(source)
    assert_same_as_torchvision(records, torchvision.datasets.SVHN(str(tmp_path), split="test"), "svhn", "test")
    assert [r.label for r in records] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert source.classnames[:3] == ["zero", "one", "two"]


def test_file_backed_dataset_counts_an_unreadable_image_and_reads_the_rest(tmp_path):
    lines = write_dtd(tmp_path, corrupt="zigzagged_0001.jpg")
    source = TorchvisionSource("dtd", str(tmp_path), "test")
    records, skips, _ = read_all(source)
    assert len(records) + len(skips) == len(lines) == 9
    assert [(s.reason, s.count, s.key) for s in skips] == [("image_unreadable", 1, "dtd/test/4")]
    assert_same_as_torchvision(records, torchvision.datasets.DTD(str(tmp_path), split="test"), "dtd", "test")
    assert source.classnames == ["banded", "dotted", "zigzagged"]  # torchvision's: the split file's, sorted


def test_source_pickles_without_the_dataset_and_builds_it_again_where_read(tmp_path, no_md5):
    write_cifar10(tmp_path, n_test=8)
    source = TorchvisionSource("cifar10", str(tmp_path))
    units = source.units()  # builds the dataset here (its length)
    assert source._dataset is not None
    blob = pickle.dumps(source)
    assert len(blob) < 4_000  # no pixels travel to the workers
    copy = pickle.loads(blob)
    assert copy._dataset is None and copy.units() == units and copy.classnames == source.classnames
    first = [(r.key, r.label, np.asarray(r.image).tobytes()) for r in source.read(units[0])]
    again = [(r.key, r.label, np.asarray(r.image).tobytes()) for r in copy.read(units[0])]
    assert first == again and len(first) == 8


def test_shipped_class_names_need_no_dataset_build(tmp_path):
    (tmp_path / "cifar-100-python").mkdir()
    source = TorchvisionSource("cifar100", str(tmp_path))
    assert source.classnames[:2] == ["apple", "aquarium fish"] and source._dataset is None


def test_missing_dataset_is_one_line_naming_the_root_and_the_dataset(tmp_path):
    for name in ("cifar10", "stl10", "mnist", "imagenet", "gtsrb"):
        with pytest.raises(FileNotFoundError) as info:
            TorchvisionSource(name, str(tmp_path / "nowhere"))
        message = str(info.value)
        assert "\n" not in message and str(tmp_path / "nowhere") in message and name in message
    assert not (tmp_path / "nowhere").exists()  # nothing downloaded or created


def test_incomplete_dataset_is_a_clear_error_when_built(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()  # the folder but none of its files
    source = TorchvisionSource("cifar10", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"^torchvision dataset cifar10 in .* cannot be read: Dataset not"):
        source.units()


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not supported offline .*cifar10"):
        TorchvisionSource("pcam", str(tmp_path))
    with pytest.raises(ConfigError, match="split 'val' is not one of train, test"):
        TorchvisionSource("cifar10", str(tmp_path), "val")
    with pytest.raises(ConfigError, match="split all reads every image"):
        TorchvisionSource("eurosat", str(tmp_path), "test")
    with pytest.raises(ConfigError, match="never downloads"):
        TorchvisionSource("cifar10", str(tmp_path), download=True)


def test_class_names_that_do_not_match_the_dataset_are_refused(tmp_path, no_md5):
    write_cifar10(tmp_path, n_test=4)
    source = TorchvisionSource("cifar10", str(tmp_path), classnames=["cat", "dog"])
    with pytest.raises(DataError, match="has 10 classes, the class names given are 2"):
        source.units()


def test_every_supported_dataset_is_a_torchvision_class_taking_our_arguments():
    for name, spec in TORCHVISION_DATASETS.items():
        cls = getattr(torchvision.datasets, spec.cls)
        for split, kwargs in spec.splits.items():
            inspect.signature(cls).bind("root", **spec.kwargs, **kwargs)
        if spec.classnames:
            assert spec.classnames in shipped_classnames(), name
        assert torchvision_dataset_name(spec.cls) == name
    assert {"cifar10", "cifar100", "stl10", "mnist", "fashion-mnist", "svhn"} <= set(TORCHVISION_DATASETS)
    assert torchvision_dataset_name("pets") == "oxford-pets" and torchvision_dataset_name("flowers") == "flowers102"


# ---------------------------------------------------------------------------------------------------------------
# KarpathySource


def _png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 10), colour).save(out, format="PNG")
    return out.getvalue()


def write_karpathy(tmp_path: Path, coco: bool = True, missing: tuple[int, ...] = (), n: int = 12) -> Path:
    """A Karpathy-style file: every third image in train, the rest test (COCO entries under a filepath)."""
    images, entries = tmp_path / "images", []
    for i in range(n):
        folder = "val2014" if coco else ""
        name = f"img_{i:03d}.jpg"
        if i not in missing:
            (images / folder).mkdir(parents=True, exist_ok=True)
            (images / folder / name).write_bytes(_png((i * 20 % 256, 40, 90)))
        entry = {"filename": name, "imgid": i, "split": "train" if i % 3 == 0 else "test",
                 "sentences": [{"raw": f"picture number {i}, caption {j}. ", "tokens": ["picture"], "sentid": j}
                               for j in range(5)]}
        if coco:
            entry["filepath"] = folder
        entries.append(entry)
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


def naive_karpathy(path: Path, images_root: Path, split: str) -> list[tuple[str, list[str], bytes | None]]:
    out = []
    for entry in json.loads(path.read_text())["images"]:
        if entry["split"] == split:
            rel = os.path.join(entry.get("filepath", ""), entry["filename"])
            file = images_root / rel
            out.append((rel, [s["raw"].strip() for s in entry["sentences"]],
                        file.read_bytes() if file.exists() else None))
    return out


@pytest.mark.parametrize("coco", [True, False])
def test_karpathy_records_match_a_naive_reading_and_a_missing_image_is_counted(tmp_path, coco):
    path = write_karpathy(tmp_path, coco=coco, missing=(4,))
    source = KarpathySource(str(path), str(tmp_path / "images"), "test")
    source.per_unit = 3
    records, skips, units = read_all(source)
    expected = naive_karpathy(path, tmp_path / "images", "test")
    assert units == [(0, 3), (3, 6), (6, 8)] and len(expected) == 8
    assert [(r.key, r.captions, r.image) for r in records] == [e for e in expected if e[2] is not None]
    assert [(s.reason, s.count, s.key) for s in skips] == [
        ("image_missing", 1, "val2014/img_004.jpg" if coco else "img_004.jpg")]
    assert source.kind == "retrieval" and all(r.label is None for r in records)
    assert pickle.loads(pickle.dumps(source)).units() == units


def test_karpathy_splits_join_with_plus_and_captionless_images_are_skips(tmp_path):
    path = write_karpathy(tmp_path, n=6)
    data = json.loads(path.read_text())
    data["images"][1]["sentences"] = []
    data["images"][2]["sentences"] = [{"raw": "  "}]
    path.write_text(json.dumps(data))
    source = KarpathySource(str(path), str(tmp_path / "images"), "train+test")
    records, skips, _ = read_all(source)
    assert len(records) == 4 and sorted(s.reason for s in skips) == ["caption_empty", "caption_missing"]
    assert all(s.reason in SKIP_REASONS for s in skips)


def test_karpathy_bad_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match=r"bad.json: not valid JSON"):
        KarpathySource(str(bad), str(tmp_path))
    bad.write_text('{"annotations": []}')
    with pytest.raises(DataError, match="'images' list"):
        KarpathySource(str(bad), str(tmp_path))
    bad.write_text('{"images": [{"split": "test", "sentences": []}]}')
    with pytest.raises(DataError, match=r"images\[0\] has no 'filename'"):
        KarpathySource(str(bad), str(tmp_path))
    path = write_karpathy(tmp_path, n=3)
    with pytest.raises(DataError, match=r"no images in split val \(the file's splits: test, train\)"):
        KarpathySource(str(path), str(tmp_path), "val")
    with pytest.raises(FileNotFoundError, match="Karpathy-split annotation file"):
        KarpathySource(str(tmp_path / "absent.json"), str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# Shipped class names and template sets


def test_shipped_class_name_lists():
    sizes = {"cifar100": 100, "country211": 211, "eurosat": 10, "fer2013": 7, "flowers102": 102, "gtsrb": 43,
             "imagenet1k": 1000, "mnist": 10, "svhn": 10}
    assert {name: len(load_classnames(name)) for name in shipped_classnames()} == sizes
    cifar100 = load_classnames("cifar100")
    # CIFAR-100's fine labels are alphabetical with underscores: the spaced names keep that order
    assert [n.replace(" ", "_") for n in cifar100] == sorted(n.replace(" ", "_") for n in cifar100)
    assert load_classnames("fer2013") == ["angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral"]
    assert load_classnames("imagenet1k")[:2] == ["tench", "goldfish"]
    for name in shipped_classnames():
        assert all(n == n.strip() and n for n in load_classnames(name)), name


def test_class_names_from_a_file_and_unknown_names(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("red fox\n\n  grey wolf \n")
    assert load_classnames(str(path)) == ["red fox", "grey wolf"]
    with pytest.raises(FileNotFoundError, match="neither a shipped list .*cifar100.* nor a file"):
        load_classnames("cifar1000")


def test_template_sets_hold_one_placeholder_each():
    for family in ("photo", "textures", "satellite", "digits", "house-numbers", "traffic-signs", "food", "pets",
                   "flowers", "aircraft", "cars", "scenes", "countries", "emotions", "sentiment", "clothing"):
        templates = TEMPLATE_SETS[family]
        assert 3 <= len(templates) <= 6, family
        for template in templates:
            assert template.count("{}") == 1 and "{c}" not in template, template
            assert fill_template(template, "<name>").count("<name>") == 1


# ---------------------------------------------------------------------------------------------------------------
# Suite files

KINDS = ("zeroshot", "retrieval", "compositional")
FORMATS = ("clip_benchmark", "shards", "folder", "torchvision", "karpathy", "sugarcrepe", "aro-relation",
           "aro-attribution", "coco-order", "flickr-order", "winoground")
REQUIRED = ("name", "kind", "format", "path", "main_metric")
OPTIONAL = ("split", "dataset", "images", "classnames", "templates", "label_key", "recall_k", "max_samples",
            "subsets")


def check_suite_file(path: Path) -> list[dict]:
    """A suite file as the suite loader reads it: it parses and resolves with omegaconf, and every task has the
    required keys, only known ones, a valid kind and format, a unique name, and names of shipped class-name
    lists, template sets and torchvision datasets that exist. Returns the resolved tasks."""
    plain = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(plain, dict) and plain.get("name") and isinstance(plain.get("tasks"), list), path
    assert "benchmark_root" in plain
    names = set()
    for task in plain["tasks"]:
        label = f"{path.name}: {task.get('name')}"
        assert all(task.get(key) for key in REQUIRED), label
        assert set(task) <= set(REQUIRED + OPTIONAL), (label, set(task) - set(REQUIRED + OPTIONAL))
        assert re.fullmatch(r"[A-Za-z0-9._-]+", task["name"]) and task["name"] not in names, label
        names.add(task["name"])
        assert task["kind"] in KINDS and task["format"] in FORMATS, label
        assert "${" not in task["path"], label
        if task["format"] == "torchvision":
            spec = TORCHVISION_DATASETS[torchvision_dataset_name(task["dataset"])]
            assert task.get("split", "test") in spec.splits, label
        if task["format"] == "karpathy":
            assert task["kind"] == "retrieval" and task.get("images"), label
        if task["kind"] == "zeroshot" and task["format"] in ("shards", "folder", "torchvision"):
            assert task.get("templates"), label  # these layouts carry no templates
        if isinstance(task.get("templates"), str):
            assert task["templates"] in TEMPLATE_SETS, label
        if isinstance(task.get("classnames"), str):
            assert task["classnames"] in shipped_classnames(), label
    return plain["tasks"]


def _lead_loader():
    try:
        from mmpretrain.benchmark.suite import load_suite
    except ImportError:
        return None
    return load_suite


@pytest.mark.parametrize("suite", sorted(p.name for p in SUITES.glob("*.yaml")))
def test_suite_files_parse_and_every_task_is_well_formed(suite, monkeypatch):
    monkeypatch.delenv("MMP_BENCHMARK_ROOT", raising=False)
    tasks = check_suite_file(SUITES / suite)
    assert all(not t["path"].startswith("${") for t in tasks)
    load_suite = _lead_loader()
    if load_suite is not None:  # the runner's own loader, where it exists
        assert [t.name for t in load_suite(SUITES / suite).tasks] == [t["name"] for t in tasks]


def test_benchmark_root_comes_from_the_environment_or_an_override(monkeypatch):
    monkeypatch.setenv("MMP_BENCHMARK_ROOT", "/data/bench")
    tasks = check_suite_file(SUITES / "quick.yaml")
    assert {t["name"]: t["path"] for t in tasks}["cifar10"] == "/data/bench/torchvision"
    raw = OmegaConf.merge(OmegaConf.load(SUITES / "quick.yaml"), OmegaConf.from_dotlist(["benchmark_root=/x"]))
    assert OmegaConf.to_container(raw, resolve=True)["tasks"][-1]["path"] == "/x/wds_mscoco_captions"


def test_datacomp_suite_is_datacomps_38_tasks():
    tasks = check_suite_file(SUITES / "datacomp.yaml")
    assert len(tasks) == 38
    retrieval = {t["name"] for t in tasks if t["kind"] == "retrieval"}
    assert retrieval == {"flickr_1k_test_image_text_retrieval", "mscoco_2014_5k_test_image_text_retrieval",
                         "winogavil"}
    by_name = {t["name"]: t for t in tasks}
    assert by_name["cifar100"]["path"].endswith("/wds_vtab-cifar100_test")
    assert by_name["dollar_street"]["path"].endswith("/wds_dollar_street_test")
    assert {n for n, t in by_name.items() if t["main_metric"] == "mean_per_class_recall"} == {
        "caltech101", "fgvc_aircraft", "flowers", "pets"}


def test_quick_suite_holds_the_demos_eval_tasks_as_written_in_demo_yaml():
    demo = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "demo.yaml"), resolve=True)
    quick = {t["name"]: t for t in check_suite_file(SUITES / "quick.yaml")}
    for task in demo["eval"]["tasks"]:
        if task.get("modality", "image") != "image" or "between" in task:
            continue  # audio tasks are the eval harness's, not the image benchmark's
        ours = quick[task["name"]]
        assert (ours["kind"], ours["format"], ours["path"]) == (task["kind"], "shards", task["data"])
        assert ours.get("label_key", "label") == task.get("label_key", "label")
        assert ours.get("classnames") == task.get("classnames")
        assert ours.get("templates") == task.get("template_set")


# ---------------------------------------------------------------------------------------------------------------
# Through the runner


def test_a_suite_of_torchvision_and_karpathy_tasks_runs_end_to_end(tmp_path):
    import open_clip
    import torch

    from mmpretrain.benchmark.runner import BenchmarkOptions, run_benchmark
    from mmpretrain.benchmark.suite import load_suite
    from mmpretrain.models.towers import register_project_configs

    register_project_configs()
    torch.manual_seed(0)
    weights = tmp_path / "micro.pt"
    torch.save(open_clip.create_model("mmp-test-micro").state_dict(), weights)
    write_mnist(tmp_path / "tv", n_test=11)
    annotations = write_karpathy(tmp_path / "k", missing=(4,), n=9)
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""
name: files
benchmark_root: {tmp_path}
tasks:
  - {{name: mnist, kind: zeroshot, format: torchvision, dataset: mnist, path: "${{benchmark_root}}/tv",
     templates: digits, main_metric: acc1}}
  - {{name: coco, kind: retrieval, format: karpathy, path: "{annotations}", images: "${{benchmark_root}}/k/images"}}
  - {{name: cifar10, kind: zeroshot, format: torchvision, dataset: cifar10, path: "${{benchmark_root}}/absent",
     templates: photo}}
""")
    out = tmp_path / "out"
    result = run_benchmark(load_suite(suite), [f"m=mmp-test-micro:{weights}"], out,
                           BenchmarkOptions(batch_size=4, workers=0, device="cpu", progress=False))
    by_task = {line["dataset"]: line for line in (json.loads(l) for l in (out / "results.jsonl").open())}
    assert set(by_task) == {"mnist", "coco"}
    assert by_task["mnist"]["mmpretrain"]["samples"] == 11
    assert set(by_task["mnist"]["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert by_task["coco"]["mmpretrain"]["samples"] == 5 and by_task["coco"]["mmpretrain"]["skipped"] == 1
    assert "mean_recall@1" in by_task["coco"]["metrics"]
    assert "cifar10" in result["missing"]


def test_the_missing_data_report_names_the_files_torchvision_reads(tmp_path):
    assert "no cifar-10-batches-py" in torchvision_data_missing("cifar10", str(tmp_path))
    assert "no test_32x32.mat" in torchvision_data_missing("svhn", str(tmp_path), "test")
    # ImageNet's test split is its val folder
    assert "(no meta.bin, val)" in torchvision_data_missing("imagenet1k", str(tmp_path), "test")
    write_mnist(tmp_path)
    assert torchvision_data_missing("mnist", str(tmp_path)) is None
