"""`mmpretrain eval` does not score an untrained model by accident, overwrite results, or lose every task's
results to one failing task."""

import json

from mmpretrain.cli import main
from tests.conftest import micro_overrides


def _tasks(good, bad):
    return [f"eval.tasks=[{{name: good, kind: retrieval, data: {good}}}, {{name: bad, kind: retrieval, data: {bad}}}]"]


def test_eval_of_a_config_refuses_an_untrained_model_unless_asked(colour_shards, tmp_path, capsys):
    overrides = micro_overrides(colour_shards, tmp_path / "runs") + [
        f"eval.tasks=[{{name: colours, kind: retrieval, data: {colour_shards}}}]"]
    out = tmp_path / "out.json"
    assert main(["eval", "demo", "--out", str(out), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--random-init" in err and "model.pretrained" in err
    assert not out.exists()
    assert main(["eval", "demo", "--out", str(out), "--random-init", *overrides]) == 0
    assert "retrieval/colours/image_to_text_R@1" in json.loads(out.read_text())


def test_eval_never_overwrites_results_without_overwrite(colour_shards, tmp_path, capsys):
    overrides = micro_overrides(colour_shards, tmp_path / "runs") + [
        f"eval.tasks=[{{name: colours, kind: retrieval, data: {colour_shards}}}]"]
    out = tmp_path / "out.json"
    out.write_text('{"kept": 1.0}\n')
    assert main(["eval", "demo", "--out", str(out), "--random-init", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "--overwrite" in err
    assert json.loads(out.read_text()) == {"kept": 1.0}
    assert main(["eval", "demo", "--out", str(out), "--random-init", "--overwrite", *overrides]) == 0
    assert "retrieval/colours/image_to_text_R@1" in json.loads(out.read_text())


def test_a_failing_task_is_reported_and_the_others_results_are_written(colour_shards, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "shard-000000.tar").write_bytes(b"this is not a tar file" * 100)
    overrides = micro_overrides(colour_shards, tmp_path / "runs") + _tasks(colour_shards, bad)
    out = tmp_path / "out.json"
    assert main(["eval", "demo", "--out", str(out), "--random-init", *overrides]) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "task retrieval/bad failed:" in err[0]
    results = json.loads(out.read_text())
    assert results["retrieval/bad/failed"] == 1.0
    assert "retrieval/good/image_to_text_R@1" in results and "retrieval/good/failed" not in results
