"""`mmpretrain negatives write`: every member copied byte for byte plus neg.json, resumable with each sample
written exactly once and the same bytes as an uninterrupted run, and training reads the result."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import pytest

from mmpretrain.cli import main as mmpretrain_main
from mmpretrain.engine.metrics import read_metrics
from mmpretrain.negatives.offline import PROGRESS_DIR, REPORT_FILE, WriteOptions, write_negative_shards
from tests.conftest import micro_overrides, write_colour_shards

REPO = Path(__file__).resolve().parents[2]
OPTIONS = WriteOptions(types=("replace_attribute", "negate", "count"), per_caption=2, seed=3)


def _cli():
    # Loaded from this checkout's data_tools/ (the installed mmpretrain.data_tools may map to another checkout).
    spec = importlib.util.spec_from_file_location("negatives_cli", REPO / "data_tools" / "negatives.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def members(folder: Path) -> dict[str, bytes]:
    """Every member of every shard in `folder`, by name (a name twice would be a sample written twice)."""
    found: dict[str, bytes] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                assert info.name not in found, f"{info.name} written twice"
                found[info.name] = tar.extractfile(info).read()
    return found


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    write_colour_shards(tmp_path / "in", n_shards=4, per_shard=5)
    return tmp_path / "in"


def test_members_are_copied_byte_for_byte_and_every_sample_has_negatives(source, tmp_path):
    summary = write_negative_shards(str(source), tmp_path / "out", OPTIONS, progress=False)
    before, after = members(source), members(tmp_path / "out")
    assert {name: after[name] for name in before} == before
    keys = {name.split(".")[0] for name in before}
    assert set(after) - set(before) == {f"{k}.{m}" for k in keys for m in ("neg.json", "negtypes.json")}
    for key in keys:
        negatives = json.loads(after[f"{key}.neg.json"])
        types = json.loads(after[f"{key}.negtypes.json"])
        assert negatives and all(isinstance(n, str) for n in negatives) and len(types) == len(negatives)
        assert set(types) <= {"replace_attribute", "negate"}  # count has no number word to change here
    assert json.loads((tmp_path / "out" / "sizes.json").read_text()) == {f"shard-{i:06d}.tar": 5 for i in range(4)}
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert report == summary and report["samples_written"] == 20 and report["samples_without_negatives"] == 0
    assert report["types"]["count"]["not_applicable"] == 20 and report["types"]["negate"]["blind_accuracy"] > 0.5


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_bytes_of_an_uninterrupted_one(source, tmp_path):
    write_negative_shards(str(source), tmp_path / "whole", OPTIONS, progress=False)
    out = tmp_path / "resumed"

    def stop_after_two(name: str) -> None:
        if name == "shard-000001.tar":
            raise Interrupted

    with pytest.raises(Interrupted):
        write_negative_shards(str(source), out, OPTIONS, progress=False, after_shard=stop_after_two)
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    # As a kill would leave them: half a shard under its temporary name, and a shard renamed but not recorded.
    (out / "shard-000002.tar.partial").write_bytes(b"half a tar")
    (out / "shard-000003.tar").write_bytes((source / "shard-000003.tar").read_bytes()[:2048])

    write_negative_shards(str(source), out, OPTIONS, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-00000[01].tar")} == kept  # not written again
    assert files(out) == files(tmp_path / "whole")  # shards, sizes.json, report, records: no .partial left
    names = members(out)  # each sample exactly once
    assert sum(name.endswith(".neg.json") for name in names) == 20

    write_negative_shards(str(source), out, OPTIONS, progress=False)  # all done: nothing changes
    assert files(out) == files(tmp_path / "whole")
    write_colour_shards(tmp_path / "more", n_shards=1, per_shard=7)  # an input shard replaced by a bigger one
    (source / "shard-000002.tar").write_bytes((tmp_path / "more" / "shard-000000.tar").read_bytes())
    write_negative_shards(str(source), out, OPTIONS, progress=False)
    with tarfile.open(out / "shard-000002.tar") as tar:
        assert sum(name.endswith(".neg.json") for name in tar.getnames()) == 7
    assert json.loads((out / "sizes.json").read_text())["shard-000002.tar"] == 7


def test_resuming_with_other_options_is_refused(source, tmp_path):
    write_negative_shards(str(source), tmp_path / "out", OPTIONS, progress=False)
    other = WriteOptions(types=OPTIONS.types, per_caption=1, seed=3)
    with pytest.raises(ValueError, match=r"written with other options \(per_caption"):
        write_negative_shards(str(source), tmp_path / "out", other, progress=False)


def test_cli_writes_chooses_per_sample_by_mix_and_refuses_existing_negatives(tmp_path, capsys):
    cli = _cli()
    write_colour_shards(tmp_path / "in", n_shards=2, per_shard=6)
    argv = ["write", str(tmp_path / "in"), str(tmp_path / "out"), "--types", "replace_attribute,negate",
            "--per-caption", "3", "--per-sample", "2", "--mix", "negate=0", "--no-progress"]
    assert cli.main(argv) == 0
    assert "12 samples in 2 shards" in capsys.readouterr().out
    for name, data in members(tmp_path / "out").items():
        if name.endswith(".negtypes.json"):
            assert json.loads(data) == ["replace_attribute", "replace_attribute"]  # negate weighs 0
    write_colour_shards(tmp_path / "hard", n_shards=1, per_shard=3, hard_negatives=True)
    assert cli.main(["write", str(tmp_path / "hard"), str(tmp_path / "out2"), "--no-progress"]) == 2
    assert "already has a neg.json" in capsys.readouterr().err
    assert cli.main(["write", str(tmp_path / "in"), str(tmp_path / "o3"), "--types", "nope"]) == 2
    assert cli.main(["write", str(tmp_path / "in"), str(tmp_path / "in")]) == 2  # over its own input


def test_training_reads_the_written_shards_as_hard_negatives(source, tmp_path):
    write_negative_shards(str(source), tmp_path / "out", OPTIONS, progress=False)
    argv = ["train", "demo", *micro_overrides(tmp_path / "out", tmp_path / "runs", steps=3), "eval.tasks=[]",
            "data.negatives_per_sample=3"]
    assert mmpretrain_main(argv) == 0
    logged = [r for r in read_metrics(tmp_path / "runs" / "micro" / "metrics.jsonl") if "loss" in r]
    assert logged and all(r["loss"] == r["loss"] for r in logged)
    assert not any(k.startswith("data/skipped/") and v for r in logged for k, v in r.items())
    assert (tmp_path / "out" / PROGRESS_DIR).is_dir()


def test_the_compositional_builder_writes_a_set_the_compositional_reader_takes(source, tmp_path):
    """`--compositional`: negatives of each sample's first caption, typed; `format: shards` reads them with their
    types and that caption as the positive, and training refuses the set (it is for evaluation)."""
    from mmpretrain.eval.compositional.readers import read_shards

    options = WriteOptions(types=("replace_attribute", "negate"), per_caption=1, seed=0, compositional=True)
    write_negative_shards(str(source), tmp_path / "set", options, progress=False)
    data = read_shards(str(tmp_path / "set"))
    assert len(data.choices) == 20
    for item in data.choices:
        assert item.positive.startswith("a ") and item.positive.endswith(" square")  # the colour caption
        assert {kind for _, kind in item.negatives} == {"replace_attribute", "negate"}
        assert all(text != item.positive for text, _ in item.negatives)
    only = read_shards(str(tmp_path / "set"), types=["negate"])
    assert all({kind for _, kind in item.negatives} == {"negate"} for item in only.choices)
    argv = ["train", "demo", *micro_overrides(tmp_path / "set", tmp_path / "runs", steps=2), "eval.tasks=[]",
            "data.negatives_per_sample=1"]
    assert mmpretrain_main(argv) == 3  # every sample's neg.json is typed: negatives_invalid, nothing to train on
