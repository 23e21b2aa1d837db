"""`mmpretrain benchmark`: suites, one pass per preprocessing for many models, resume, workers, ranks, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import open_clip
import pytest
import torch
import webdataset as wds
from PIL import Image

from mmpretrain.benchmark import runner as runner_module
from mmpretrain.benchmark.results import read_lines
from mmpretrain.benchmark.runner import BenchmarkOptions, run_benchmark
from mmpretrain.eval.sources import ShardSource
from mmpretrain.eval.stream import stream_features
from mmpretrain.benchmark.suite import load_suite
from mmpretrain.cli import main
from mmpretrain.errors import ConfigError, DataError
from mmpretrain.models.towers import register_project_configs
from tests.gloo import run_on_ranks

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
MODEL = "mmp-test-micro"


def _png(colour: tuple[int, int, int], size: int, seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)  # a little noise so that no two images embed alike
    noise = torch.randint(-20, 20, (size, size, 3), generator=generator)
    pixels = (torch.tensor(colour).view(1, 1, 3) + noise).clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_sets(root: Path, n: int = 30, shards: int = 3, bad: int | None = None) -> Path:
    """Zero-shot (colour label in .json) and retrieval (two captions) shards of noisy coloured squares."""
    names = list(COLOURS)
    folder = root / "colours"
    folder.mkdir(parents=True)
    per = (n + shards - 1) // shards
    for s in range(shards):
        with wds.TarWriter(str(folder / f"shard-{s:04d}.tar")) as sink:
            for i in range(s * per, min(n, (s + 1) * per)):
                name = names[i % 3]
                image = b"not an image" if i == bad else _png(COLOURS[name], 24 + i % 5, i)
                sink.write({"__key__": f"{i:05d}", "png": image, "json": json.dumps({"colour": name}).encode(),
                            "txt": f"a {name} square number {i}\nsomething {name}".encode()})
    return folder


def write_suite(path: Path, data: Path, extra: str = "") -> Path:
    path.write_text(f"""
name: test
benchmark_root: /nowhere
tasks:
  - {{name: colours, kind: zeroshot, format: shards, path: "{data}", label_key: colour,
     classnames: [red, green, blue], templates: ["a {{}} square.", "something {{c}}."]}}
  - {{name: captions, kind: retrieval, format: shards, path: "{data}", recall_k: [1, 2, 5]}}
  - {{name: absent, kind: zeroshot, format: clip_benchmark, path: "${{benchmark_root}}/wds_cifar10"}}
{extra}""")
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different random initialisations of the micro open_clip model, saved as pretrained files."""
    register_project_configs()
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = open_clip.create_model(MODEL)
        path = tmp_path_factory.mktemp("weights") / f"seed{seed}.pt"
        torch.save(model.state_dict(), path)
        files.append(path)
    return files[0], files[1]


def options(**kw: object) -> BenchmarkOptions:
    return BenchmarkOptions(**{"batch_size": 7, "workers": 0, "device": "cpu", "progress": False, **kw})


def count_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every streamed pass over a set, as the number of models it fed."""
    passes: list[int] = []

    def spy(source, models, *args, **kwargs):
        passes.append(len(models))
        return stream_features(source, models, *args, **kwargs)
    monkeypatch.setattr(runner_module, "stream_features", spy)
    return passes


def test_models_sharing_preprocessing_share_one_pass_and_a_rerun_resumes(tmp_path: Path, weights,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    suite = load_suite(write_suite(tmp_path / "suite.yaml", write_sets(tmp_path)))
    passes = count_passes(monkeypatch)
    out = tmp_path / "out"
    first = run_benchmark(suite, [f"a={MODEL}:{weights[0]}", f"b={MODEL}:{weights[1]}"], out, options())
    assert passes == [2, 2]  # one pass per present task, feeding both models
    assert first["missing"] == {"absent": "/nowhere/wds_cifar10 does not exist"}
    assert json.loads((out / "missing.json").read_text()) == first["missing"]
    lines = read_lines(out)
    assert sorted((l["model"], l["dataset"]) for l in lines) == [("a", "captions"), ("a", "colours"),
                                                                 ("b", "captions"), ("b", "colours")]
    by = {(l["model"], l["dataset"]): l for l in lines}
    assert set(by["a", "colours"]["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert by["a", "colours"]["task"] == "zeroshot_classification"
    assert by["a", "captions"]["task"] == "zeroshot_retrieval"
    assert {"image_retrieval_recall@2", "text_retrieval_recall@5", "mean_recall@1"} <= set(by["a", "captions"]["metrics"])
    assert by["a", "colours"]["mmpretrain"]["samples"] == 30
    assert by["a", "colours"]["metrics"] != by["b", "colours"]["metrics"] or \
        by["a", "captions"]["metrics"] != by["b", "captions"]["metrics"]  # two different models
    flat = json.loads((out / "models" / "a" / "results.json").read_text())
    assert flat["zeroshot/colours/top1"] == by["a", "colours"]["metrics"]["acc1"]
    assert "| a |" in (out / "table.md").read_text() and (out / "table.csv").read_text().startswith("model,")
    details = json.loads((out / "details" / "a" / "colours.json").read_text())
    assert sum(map(sum, details["confusion"])) == 30
    gallery = json.loads((out / "details" / "a" / "captions.json").read_text())
    assert gallery["queries"] and all(k in gallery["thumbnails"] for q in gallery["queries"] for k in q["top"])

    # A killed run may leave a torn line; the rerun ignores it, keeps a and b, and scores only the new model.
    with open(out / "results.jsonl", "a") as handle:
        handle.write('{"dataset": "colours", "mod')
    passes.clear()
    run_benchmark(suite, [f"a={MODEL}:{weights[0]}", f"b={MODEL}:{weights[1]}", f"c={MODEL}:{weights[0]}"], out,
                  options())
    assert passes == [1, 1]
    after = {(l["model"], l["dataset"]): l for l in read_lines(out)}
    assert after["a", "colours"] == by["a", "colours"]
    assert after["c", "colours"]["metrics"] == by["a", "colours"]["metrics"]  # c is a's weights under another name
    assert "| c |" in (out / "table.md").read_text()


def test_models_with_other_preprocessing_get_their_own_pass(tmp_path: Path, weights,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    config = json.loads((Path(open_clip.__file__).parent / "model_configs" / "ViT-B-32.json").read_text())
    micro = open_clip.get_model_config(MODEL)
    micro["vision_cfg"]["image_size"] = 48
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "mmp-test-micro48.json").write_text(json.dumps(micro))
    open_clip.add_model_config(tmp_path / "cfg")
    assert config  # open_clip's own configs are where we expect them
    suite = load_suite(write_suite(tmp_path / "suite.yaml", write_sets(tmp_path))).select(["colours"])
    passes = count_passes(monkeypatch)
    run_benchmark(suite, [f"a={MODEL}:{weights[0]}", "big=mmp-test-micro48"], tmp_path / "out", options())
    assert sorted(passes) == [1, 1]


def test_features_do_not_depend_on_workers_and_max_samples_takes_the_first(tmp_path: Path, weights) -> None:
    from mmpretrain.benchmark.models import load_bench_model

    data = write_sets(tmp_path, n=40, shards=4, bad=5)
    model = load_bench_model(f"{MODEL}:{weights[0]}", "a")
    source = ShardSource(str(data), "zeroshot", ["red", "green", "blue"], "colour")
    results = [stream_features(source, [model], model.transform, 6, workers, torch.device("cpu"), False)
               for workers in (0, 2)]
    assert results[0].keys == results[1].keys == [f"{i:05d}" for i in range(40) if i != 5]
    torch.testing.assert_close(results[0].features["a"], results[1].features["a"], rtol=0, atol=1e-6)
    assert results[0].skips.by_reason["image_unreadable"] == 1
    first = stream_features(source, [model], model.transform, 6, 2, torch.device("cpu"), False, max_samples=12)
    assert first.keys == results[0].keys[:12]
    torch.testing.assert_close(first.features["a"], results[0].features["a"][:12], rtol=0, atol=1e-6)


def _two_rank_benchmark(rank: int, world: int) -> list[dict]:
    import os
    out = Path(os.environ["MMP_TEST_OUT"])
    suite = load_suite(out.parent / "suite.yaml")
    run_benchmark(suite, [f"a={MODEL}:{os.environ['MMP_TEST_WEIGHTS']}"], out / f"world{world}", options())
    return read_lines(out / f"world{world}") if rank == 0 else []


def test_two_ranks_give_the_metrics_of_one(tmp_path: Path, weights, monkeypatch: pytest.MonkeyPatch) -> None:
    write_suite(tmp_path / "suite.yaml", write_sets(tmp_path, n=31, shards=5))
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    monkeypatch.setenv("MMP_TEST_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MMP_TEST_WEIGHTS", str(weights[0]))
    # Both in spawned processes of one thread each: the same float arithmetic as each other (a test process with
    # more threads may differ in the last bits, which decides ties between the set's repeated captions).
    single = run_on_ranks(_two_rank_benchmark, 1, tmp_path / "one")[0]
    ranked = run_on_ranks(_two_rank_benchmark, 2, tmp_path / "two")[0]
    assert {l["dataset"]: l["metrics"] for l in ranked} == {l["dataset"]: l["metrics"] for l in single}
    assert {l["dataset"]: l["mmpretrain"]["samples"] for l in ranked} == {"colours": 31, "captions": 31}


def test_strict_refuses_absent_data_and_bad_suites_are_one_line_errors(tmp_path: Path, weights,
                                                                       capsys: pytest.CaptureFixture) -> None:
    suite_file = write_suite(tmp_path / "suite.yaml", write_sets(tmp_path))
    with pytest.raises(DataError, match="--strict: 1 task"):
        run_benchmark(load_suite(suite_file), [f"{MODEL}:{weights[0]}"], tmp_path / "o", options(strict=True))
    assert not (tmp_path / "o").exists()  # refused before any work
    assert main(["benchmark", str(suite_file), "--model", "no-such-model", "--out", str(tmp_path / "o2")]) == 2
    assert "not a run directory, an export, nor an open_clip model name" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  - {name: x, kind: zeroshot, format: shards, path: /p, colour: 1}\n")
    with pytest.raises(ConfigError, match=r"task 0 \('x'\): unknown key\(s\) colour"):
        load_suite(bad)
    bad.write_text("tasks:\n  - {name: x, kind: zeroshot, format: parquet, path: /p}\n")
    with pytest.raises(ConfigError, match="format must be one of"):
        load_suite(bad)
    moved = load_suite(suite_file, ["benchmark_root=/elsewhere"])
    assert moved.tasks[2].path == "/elsewhere/wds_cifar10"
    with pytest.raises(ConfigError, match="not in suite"):
        moved.select(["colours", "nope"])


def test_cli_prints_the_table_and_names_missing_tasks(tmp_path: Path, weights, capsys: pytest.CaptureFixture) -> None:
    suite_file = write_suite(tmp_path / "suite.yaml", write_sets(tmp_path))
    code = main(["benchmark", str(suite_file), "--model", f"m={MODEL}:{weights[0]}", "--out", str(tmp_path / "o"),
                 "--workers", "0", "--device", "cpu", "--no-progress", "--tasks", "colours,absent"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| m |" in printed and "missing (1 of 2 tasks, data absent): absent" in printed


def test_compositional_tasks_run_through_the_eval_harness(tmp_path: Path, weights) -> None:
    from mmpretrain.benchmark.models import load_bench_model
    from mmpretrain.eval.harness import EvalConfig, EvalTaskConfig, run_eval
    from tests.eval.test_compositional import _sugarcrepe

    _sugarcrepe(tmp_path / "sc", {"replace_obj": 6, "swap_att": 5})
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(f"tasks:\n  - {{name: sc, kind: compositional, format: sugarcrepe, path: {tmp_path / 'sc'}}}\n")
    run_benchmark(load_suite(suite_file), [f"a={MODEL}:{weights[0]}"], tmp_path / "out", options())
    (line,) = read_lines(tmp_path / "out")
    assert line["task"] == "compositional" and line["mmpretrain"]["main_metric"] == "acc"
    model = load_bench_model(f"{MODEL}:{weights[0]}", "a")
    config = EvalConfig(batch_size=7, tasks=[EvalTaskConfig(name="sc", kind="compositional", format="sugarcrepe",
                                                            data=str(tmp_path / "sc"))])
    expected = run_eval(model.model, model.transform, model.tokenizer, config, progress=False)
    assert line["metrics"]["swap_att/acc"] == expected["compositional/sc/swap_att/acc"]
    assert line["mmpretrain"]["main_value"] == expected["compositional/sc/acc"]
    assert "swap_att/blind_acc" in line["metrics"]


def _rank_zero_evaluates_alone(rank: int, world: int) -> dict:
    import os

    from mmpretrain.benchmark.models import load_bench_model
    from mmpretrain.eval.harness import EvalConfig, EvalTaskConfig, run_eval

    if rank != 0:  # as in training under ZeRO-0/1/2: the other ranks wait at the next collective
        return {}
    model = load_bench_model(f"{MODEL}:{os.environ['MMP_TEST_WEIGHTS']}", "a")
    config = EvalConfig(batch_size=7, workers=0, tasks=[EvalTaskConfig(
        name="colours", kind="zeroshot", data=os.environ["MMP_TEST_DATA"], label_key="colour",
        classnames=["red", "green", "blue"], templates=["a {} square."])])
    return run_eval(model.model, model.transform, model.tokenizer, config, progress=False)


def test_the_harness_streams_alone_inside_a_process_group(tmp_path: Path, weights,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Training's evaluation runs on rank 0 while the other ranks wait: its streamed read must not be a
    collective (it was, and the ZeRO-2 run hung)."""
    monkeypatch.setenv("MMP_TEST_DATA", str(write_sets(tmp_path, n=12)))
    monkeypatch.setenv("MMP_TEST_WEIGHTS", str(weights[0]))
    results = run_on_ranks(_rank_zero_evaluates_alone, 2, tmp_path)
    assert results[0]["zeroshot/colours/skipped"] == 0.0 and "zeroshot/colours/top1" in results[0]
