"""`mmpretrain benchmark` against CLIP_benchmark's own eval: same generated sets (written by CLIP_benchmark's
writer), same tiny model file, fp32 on CPU: every metric agrees to 1e-4, with 0 and 2 workers, and models
scored together give the numbers each gives alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("mmpretrain.benchmark.runner")

from mmpretrain.cli import main as mmpretrain_main  # noqa: E402
from tests.benchmark import cb_reference as cb  # noqa: E402

TOLERANCE = 1e-4
CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
RETRIEVAL_METRICS = tuple(f"{side}_retrieval_recall@{k}" for k in (1, 5, 10) for side in ("image", "text"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cb.write_reference_inputs(tmp_path_factory.mktemp("parity"))


@pytest.fixture(scope="module")
def reference(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    """clip_benchmark's metrics per generated set (its eval, in-process, fp32)."""
    out = tmp_path_factory.mktemp("clip_benchmark")
    return {name: cb.run_clip_benchmark(inputs[name], cb.MODEL, inputs["model"], out, batch_size=16,
                                        task=cb.task_of(inputs[name]))["metrics"]
            for name in (cb.CLASSIFICATION, cb.RETRIEVAL)}


def _suite(folder: Path) -> Path:
    path = folder / "suite.yaml"
    path.write_text(
        "name: parity\n"
        "benchmark_root: /nonexistent\n"
        "tasks:\n"
        f"  - {{name: {cb.CLASSIFICATION}, kind: zeroshot, format: clip_benchmark, "
        f"path: '${{benchmark_root}}/{cb.CLASSIFICATION}', main_metric: acc1}}\n"
        f"  - {{name: {cb.RETRIEVAL}, kind: retrieval, format: clip_benchmark, "
        f"path: '${{benchmark_root}}/{cb.RETRIEVAL}'}}\n")
    return path


def _mmpretrain(inputs: dict[str, Path], out: Path, models: list[str], workers: int,
                batch_size: int = 16) -> dict[tuple[str, str], dict]:
    """`mmpretrain benchmark` in this process; its result lines by (model label, task)."""
    argv = ["benchmark", str(_suite(out.parent)), f"benchmark_root={inputs['model'].parent}"]
    for model in models:
        argv += ["--model", model]
    argv += ["--out", str(out), "--batch-size", str(batch_size), "--workers", str(workers), "--device", "cpu",
             "--strict", "--no-progress"]
    assert mmpretrain_main(argv) == 0
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return {(line["model"], line["dataset"]): line for line in lines}


def _compare(ours: dict[str, float], theirs: dict[str, float], names: tuple[str, ...], what: str,
             columns: tuple[str, str] = ("mmpretrain", "clip_benchmark")) -> None:
    print(f"\n{what}")
    print(f"  {'metric':28s} {columns[0]:>15s} {columns[1]:>15s}")
    for name in names:
        print(f"  {name:28s} {ours.get(name, float('nan')):15.6f} {theirs[name]:15.6f}")
    for name in names:
        assert name in ours, f"{what}: mmpretrain has no {name} (it has {sorted(ours)})"
        assert abs(ours[name] - theirs[name]) <= TOLERANCE, \
            f"{what}: {name} {columns[0]} {ours[name]} vs {columns[1]} {theirs[name]}"


@pytest.mark.parametrize("workers", [0, 2])
def test_metrics_equal_clip_benchmark(inputs: dict[str, Path], reference: dict[str, dict[str, float]],
                                      tmp_path: Path, workers: int) -> None:
    spec = f"{cb.MODEL}:{inputs['model']}"
    lines = _mmpretrain(inputs, tmp_path / "out", [spec], workers)
    (label,) = {model for model, _ in lines}
    classification = lines[(label, cb.CLASSIFICATION)]
    retrieval = lines[(label, cb.RETRIEVAL)]
    assert classification["task"] == "zeroshot_classification" and retrieval["task"] == "zeroshot_retrieval"
    assert classification["pretrained"] == spec and classification["language"] == "en"
    assert classification["mmpretrain"]["samples"] == 60 and classification["mmpretrain"]["skipped"] == 0
    assert retrieval["mmpretrain"]["samples"] == 36
    _compare(classification["metrics"], reference[cb.CLASSIFICATION], CLASSIFICATION_METRICS,
             f"{cb.CLASSIFICATION} (zero-shot, 60 images, 10 classes), workers={workers}")
    _compare(retrieval["metrics"], reference[cb.RETRIEVAL], RETRIEVAL_METRICS,
             f"{cb.RETRIEVAL} (retrieval, 36 images x 3 captions), workers={workers}")


def test_two_models_in_one_call_equal_each_alone(inputs: dict[str, Path], tmp_path: Path) -> None:
    other = cb.make_tiny_model(tmp_path / "tiny-vit-seed1.pt", cb.MODEL, seed=1)
    specs = {"a": f"a={cb.MODEL}:{inputs['model']}", "b": f"b={cb.MODEL}:{other}"}
    together = _mmpretrain(inputs, tmp_path / "together", list(specs.values()), workers=2)
    for label, spec in specs.items():
        alone = _mmpretrain(inputs, tmp_path / f"alone-{label}", [spec], workers=0)
        for task, names in ((cb.CLASSIFICATION, CLASSIFICATION_METRICS), (cb.RETRIEVAL, RETRIEVAL_METRICS)):
            _compare(together[(label, task)]["metrics"], alone[(label, task)]["metrics"], names,
                     f"model {label} on {task}", columns=("with the other", "alone"))
    # the two models differ, so sharing the pass did not hand one model's features to the other
    assert together[("a", cb.CLASSIFICATION)]["metrics"] != together[("b", cb.CLASSIFICATION)]["metrics"] or \
        together[("a", cb.RETRIEVAL)]["metrics"] != together[("b", cb.RETRIEVAL)]["metrics"]


def test_the_eval_harness_equals_clip_benchmark_on_its_layout(inputs: dict[str, Path],
                                                               reference: dict[str, dict[str, float]]) -> None:
    """Training's evaluation (`run_eval`, streamed) on the same CLIP_benchmark-layout shards: the `.cls` member as
    the label, the set's own classnames.txt and templates file, and the captions of its retrieval set."""
    from mmpretrain.benchmark.models import load_bench_model
    from mmpretrain.eval.harness import EvalConfig, EvalTaskConfig, run_eval
    from mmpretrain.eval.sources import read_lines

    model = load_bench_model(f"{cb.MODEL}:{inputs['model']}", "m")
    root = inputs[cb.CLASSIFICATION]
    config = EvalConfig(batch_size=16, workers=2, tasks=[
        EvalTaskConfig(name="cls", kind="zeroshot", data=str(root / "test"), label_key="cls",
                       classnames=read_lines(root / "classnames.txt"),
                       templates=read_lines(root / "zeroshot_classification_templates.txt")),
        EvalTaskConfig(name="ret", kind="retrieval", data=str(inputs[cb.RETRIEVAL] / "test"))])
    ours = run_eval(model.model, model.transform, model.tokenizer, config, progress=False)
    names = {"zeroshot/cls/top1": "acc1", "zeroshot/cls/top5": "acc5",
             "zeroshot/cls/mean_per_class_recall": "mean_per_class_recall"}
    for k in (1, 5, 10):
        names[f"retrieval/ret/image_to_text_R@{k}"] = f"text_retrieval_recall@{k}"
        names[f"retrieval/ret/text_to_image_R@{k}"] = f"image_retrieval_recall@{k}"
    theirs = {**reference[cb.CLASSIFICATION], **reference[cb.RETRIEVAL]}
    _compare({names[k]: v for k, v in ours.items() if k in names}, theirs, tuple(names.values()),
             "eval harness (in-training evaluation) on CLIP_benchmark's layout")
