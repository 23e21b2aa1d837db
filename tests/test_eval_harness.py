"""The eval harness end to end: shards and image folders in, a flat metric dict out, with a tiny open_clip model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import open_clip
import pytest
import torch
import webdataset as wds
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from mmpretrain.errors import DataError
from mmpretrain.eval.datasets import load_retrieval, load_zeroshot
from mmpretrain.eval.harness import EvalConfig, EvalTaskConfig, format_table, run_eval, write_results

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
CLASSNAMES = list(COLOURS)


class Adapter(nn.Module):
    """Exposes the project's `encode(modality, x, normalize)` interface over an open_clip model."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if modality == "image":
            return self.clip.encode_image(x, normalize=normalize)
        return self.clip.encode_text(x, normalize=normalize)


@pytest.fixture(scope="module")
def tiny_clip() -> tuple[Adapter, object, object]:
    torch.manual_seed(0)
    clip = open_clip.model.CustomTextCLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
        text_cfg=dict(context_length=16, vocab_size=49408, width=64, heads=2, layers=2),
    )
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    return Adapter(clip), open_clip.image_transform(32, is_train=False), tokenizer


def _png(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_shards(folder: Path, labels: list[object], shards: int = 2) -> None:
    """Shards of coloured squares; two captions each; `labels[i]` goes into sample i's JSON."""
    folder.mkdir(parents=True)
    per_shard = (len(labels) + shards - 1) // shards
    for s in range(shards):
        with wds.TarWriter(str(folder / f"shard-{s:06d}.tar")) as sink:
            for i in range(s * per_shard, min(len(labels), (s + 1) * per_shard)):
                name = CLASSNAMES[i % 3]
                sink.write({"__key__": f"{i:06d}", "png": _png(COLOURS[name]),
                            "txt": f"a {name} square\nsomething {name} number {i}".encode(),
                            "json": json.dumps({"label": labels[i]}).encode()})


def test_run_eval_on_shards_returns_flat_metrics_and_restores_train_mode(tmp_path: Path, tiny_clip) -> None:
    model, transform, tokenizer = tiny_clip
    # Labels as class names in some samples and class indices in others.
    labels: list[object] = [CLASSNAMES[i % 3] if i % 2 else i % 3 for i in range(10)]
    _write_shards(tmp_path / "shards", labels)
    config = EvalConfig(batch_size=4, tasks=[
        EvalTaskConfig(name="colours", kind="zeroshot", data=str(tmp_path / "shards"), classnames=CLASSNAMES,
                       template_set="shapes-colour", templates=["a {} square."]),
        EvalTaskConfig(name="squares", kind="retrieval", data=str(tmp_path / "shards" / "shard-*.tar"),
                       max_samples=7),
    ])
    model.train()
    results = run_eval(model, transform, tokenizer, config, progress=False)
    assert model.training
    assert set(results) == {
        "zeroshot/colours/top1", "zeroshot/colours/top5", "zeroshot/colours/mean_per_class_recall",
        *(f"retrieval/squares/{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)),
        "zeroshot/colours/skipped", "retrieval/squares/skipped",
    }
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in results.values())
    assert results["zeroshot/colours/skipped"] == results["retrieval/squares/skipped"] == 0.0
    assert results["zeroshot/colours/top5"] == 1.0  # capped at 3 classes
    assert results["retrieval/squares/text_to_image_R@10"] == 1.0  # capped at max_samples=7 images
    table = format_table(results)
    assert "zeroshot/colours/top1" in table and len({len(line) for line in table.splitlines()}) == 1


def test_write_results_writes_flat_json_and_config_beside_it(tmp_path: Path) -> None:
    config = EvalConfig(tasks=[EvalTaskConfig(name="d", data="x", classnames=["a"], templates=["{}"])])
    path = write_results({"zeroshot/d/top1": 0.5}, config, tmp_path / "eval")
    assert json.loads(path.read_text()) == {"zeroshot/d/top1": 0.5}
    saved = OmegaConf.load(path.parent / "eval_config.yaml")
    assert OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvalConfig), saved)) == config


def test_configs_load_through_omegaconf_structured_schema() -> None:
    schema = OmegaConf.structured(EvalConfig)
    merged = OmegaConf.merge(schema, {"tasks": [{"name": "d", "kind": "retrieval", "data": "x"}]})
    assert OmegaConf.to_object(merged).tasks[0].kind == "retrieval"


@pytest.mark.parametrize("task, message", [
    (EvalTaskConfig(name="digits", data=""), "digits.*data is empty"),
    (EvalTaskConfig(name="digits", data="x", templates=["{}"]), "digits.*needs classnames"),
    (EvalTaskConfig(name="digits", data="x", classnames=["a"]), "digits.*needs templates"),
    (EvalTaskConfig(name="digits", data="x", classnames=["a"], template_set="nope"), "digits.*unknown template"),
])
def test_invalid_tasks_fail_up_front_naming_the_task(task: EvalTaskConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_eval(Adapter(nn.Identity()), lambda img: img, lambda t: t, EvalConfig(tasks=[task]), progress=False)


def test_unknown_label_value_is_a_skip_naming_key_and_value(tmp_path: Path) -> None:
    _write_shards(tmp_path / "shards", ["red", "purple", "blue"], shards=1)
    data = load_zeroshot(str(tmp_path / "shards"), CLASSNAMES, label_key="label")
    assert data.labels == [0, 2] and data.skips.by_reason == {"label_invalid": 1}
    detail = data.skips.last_detail["label_invalid"]
    assert "000001" in detail and "label='purple'" in detail
    # A label_key no sample has leaves nothing to evaluate: one error naming the task, the reason and an example.
    task = EvalTaskConfig(name="colours", data=str(tmp_path / "shards"), label_key="colour", classnames=CLASSNAMES,
                          templates=["{}"])
    with pytest.raises(DataError, match=r"eval task zeroshot/colours: .*skipped 3: "
                                        r"label_invalid 3 \(e.g. .*no 'colour' field"):
        run_eval(Adapter(nn.Identity()), lambda img: img, lambda t: t, EvalConfig(tasks=[task]), progress=False)


def test_image_folders_load_for_zeroshot_and_retrieval(tmp_path: Path, tiny_clip) -> None:
    for name in ("red", "blue"):
        (tmp_path / "cls" / name).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "cls" / name / f"{i}.png").write_bytes(_png(COLOURS[name]))
    data = load_zeroshot(str(tmp_path / "cls"))
    assert data.classnames == ["blue", "red"] and data.labels == [0, 0, 1, 1]
    assert load_zeroshot(str(tmp_path / "cls"), CLASSNAMES).labels == [2, 2, 0, 0]

    (tmp_path / "ret").mkdir()
    for i, name in enumerate(CLASSNAMES):
        (tmp_path / "ret" / f"{i}.png").write_bytes(_png(COLOURS[name]))
        (tmp_path / "ret" / f"{i}.txt").write_text(f"a {name} square\n\nplain {name}\n")
    retrieval = load_retrieval(str(tmp_path / "ret"))
    assert retrieval.captions[1] == ["a green square", "plain green"] and retrieval.images[0].mode == "RGB"

    model, transform, tokenizer = tiny_clip
    config = EvalConfig(tasks=[
        EvalTaskConfig(name="folder", data=str(tmp_path / "cls"), template_set="generic"),
        EvalTaskConfig(name="folder", kind="retrieval", data=str(tmp_path / "ret")),
    ])
    results = run_eval(model, transform, tokenizer, config, progress=False)
    assert "zeroshot/folder/top1" in results and "retrieval/folder/text_to_image_R@1" in results


def test_evaluate_model_takes_the_sections_not_the_run_config(colour_shards: Path, tmp_path: Path) -> None:
    from mmpretrain.errors import ConfigError
    from mmpretrain.eval.evaluate import evaluate_model
    from mmpretrain.models import ModelConfig

    model = ModelConfig(name="mmp-test-micro")
    tasks = EvalConfig(tasks=[EvalTaskConfig(name="colours", kind="retrieval", data=str(colour_shards))],
                       batch_size=8)
    with pytest.raises(ConfigError, match="--random-init"):  # an untrained model is scored only when asked for
        evaluate_model(model, tasks, tmp_path / "out.json", device="cpu", progress=False)
    results = evaluate_model(model, tasks, tmp_path / "out.json", device="cpu", progress=False, random_init=True)
    assert set(results) >= {"retrieval/colours/image_to_text_R@1"}
    assert json.loads((tmp_path / "out.json").read_text()) == pytest.approx(results)
    saved = OmegaConf.load(tmp_path / "eval_config.yaml")  # the two sections, when no record is given
    assert set(saved) == {"model", "eval"} and saved.model.name == "mmp-test-micro"
    with pytest.raises(ConfigError, match="eval.tasks is empty"):
        evaluate_model(model, EvalConfig(), tmp_path / "none.json")
