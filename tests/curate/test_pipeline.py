"""`mmpretrain curate` end to end on a local Ray with 2 CPUs: what is dropped and why, byte-for-byte output read back
by webdataset's reader, and exactly-once output when an actor or the driver is killed (SIGKILL) mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import webdataset as wds
import yaml

from mmpretrain.curate.config import load_curate_config
from mmpretrain.curate.pipeline import curate
from mmpretrain.data.safe_tar import EVERY_MEMBER, ShardFailure, read_shard
from mmpretrain.errors import ConfigError
from tests.curate.conftest import read_output_keys, write_eval_set, write_inputs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    eval_images = write_eval_set(root / "eval")
    planted = write_inputs(root / "in", eval_images)
    return root, planted


def config_file(root: Path, out: Path, model: str, **changes) -> Path:
    config = {
        "inputs": [str(root / "in")], "output": str(out), "group_shards": 1, "wave_groups": 5,
        "ray": {"num_cpus": 2, "object_store_mb": 150},
        "stages": [
            {"type": "basic_filter", "min_caption_words": 2},
            {"type": "embed", "model": model, "batch_size": 16, "rows_per_block": 8},
            # The micro model is untrained: distinct noise images reach cosine 0.997, so only copies pass 0.9999.
            {"type": "dedup", "clusters": 3, "threshold": 0.9999},
            {"type": "decontaminate", "eval": [str(root / "eval")], "threshold": 0.9999},
            {"type": "clip_score", "top_fraction": changes.pop("top_fraction", 0.8)},
            {"type": "negatives", "types": ["swap_attributes", "count"]},
            {"type": "write", "samples_per_shard": 5},
        ],
    }
    config.update(changes)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def decisions(out: Path) -> dict[tuple[str, str], dict]:
    rows = pads.dataset(out / "decisions").to_table().to_pylist()
    table = {(Path(r["shard"]).name, r["key"]): r for r in rows}
    assert len(table) == len(rows), "a sample appears twice in the decision table"
    return table


@pytest.fixture(scope="module")
def clean(data, micro_model, local_ray):
    root, _ = data
    out = root / "clean"
    summary = curate(load_curate_config(config_file(root, out, micro_model)), progress=False)
    return out, summary


def test_every_drop_has_its_reason_and_the_output_is_the_kept_set(data, clean):
    root, planted = data
    out, summary = clean
    table = decisions(out)
    by_key = {key: row for (_, key), row in table.items()}
    assert {k: by_key[k]["reason"] for k in planted} == {
        "s0044": "duplicate", "s0045": "contaminated", "s0046": "image_unreadable", "s0047": "caption_too_short",
        "s9000": "caption_missing"}
    assert by_key["s0044"]["duplicate_similarity"] > 0.9999 and by_key["s0045"]["contamination_similarity"] > 0.9999
    assert by_key["s0046"]["stage"] == "read" and by_key["s0044"]["stage"] == "dedup"
    assert "s9001" not in by_key                                   # cut off by the truncation: lost, and said so
    assert [(Path(f["shard"]).name, f["reason"]) for f in summary["shard_failures"]] == [
        ("in-999999.tar", "shard_truncated")]
    kept = {key for (_, key), row in table.items() if row["kept"]}
    assert all(row["reason"] is None for row in table.values() if row["kept"])
    reached_clip = sum(1 for row in table.values() if row["kept"] or row["stage"] == "clip_score")
    assert len(kept) == -(-reached_clip * 8 // 10)                  # ceil(0.8 x what reached the CLIP-score stage)
    output = read_output_keys(out / "shards")
    assert sorted(output) == sorted(kept)                           # each kept sample once, nothing else
    assert summary["kept"] + sum(n for reasons in summary["dropped"].values() for n in reasons.values()) == len(table)
    sizes = json.loads((out / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == len(kept) and max(sizes.values()) <= 5


def test_output_members_are_the_input_bytes_plus_negatives(data, clean):
    root, _ = data
    out, _ = clean
    inputs = {}
    for shard in sorted((root / "in").glob("*.tar")):
        for item in read_shard(str(shard), EVERY_MEMBER):
            if not isinstance(item, ShardFailure):
                inputs[item["__key__"]] = {k: v for k, v in item.items() if not k.startswith("__")}
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    with_negatives = 0
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        members = {k: v for k, v in sample.items() if not k.startswith("__")}
        original = inputs[sample["__key__"]]
        assert {k: members[k] for k in original} == original        # png, txt, json: byte for byte
        assert set(members) - set(original) == {"neg.json", "negtypes.json"}
        with_negatives += bool(json.loads(members["neg.json"]))
    assert with_negatives > 0


def _same_result(out: Path, reference: Path) -> None:
    assert read_output_keys(out / "shards") and sorted(read_output_keys(out / "shards")) == sorted(
        read_output_keys(reference / "shards"))
    keys = read_output_keys(out / "shards")
    assert len(keys) == len(set(keys))
    got, want = decisions(out), decisions(reference)
    assert {k: (r["kept"], r["reason"]) for k, r in got.items()} == {k: (r["kept"], r["reason"]) for k, r in want.items()}


def test_an_embed_actor_killed_mid_run_loses_and_duplicates_nothing(data, clean, micro_model, tmp_path, monkeypatch):
    root, _ = data
    marker = tmp_path / "killed"
    monkeypatch.setenv("MMP_CURATE_FAULT", f"kill_embedder:{marker}")
    out = root / "actor-killed"
    curate(load_curate_config(config_file(root, out, micro_model)), progress=False)
    assert marker.exists(), "no actor was killed: the fault hook did not fire"
    _same_result(out, clean[0])


def _run_and_kill(config: Path, fault: str) -> None:
    """The CLI in its own process group with a fault that SIGKILLs the driver; then the group's leftovers too."""
    env = {**os.environ, "MMP_CURATE_FAULT": fault, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    process = subprocess.Popen([sys.executable, "-m", "mmpretrain.data_tools.curate", str(config), "--no-progress"],
                               env=env, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate(timeout=400)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the Ray processes the killed driver started
    except ProcessLookupError:
        pass
    assert process.returncode == -signal.SIGKILL, output[-3000:]


def test_the_driver_killed_while_analysing_resumes_to_the_clean_result(data, clean, micro_model):
    root, _ = data
    out = root / "killed-analysing"
    config = config_file(root, out, micro_model, wave_groups=3)          # 5 groups: waves of 3 and 2
    _run_and_kill(config, "kill_driver:analyse:1")
    assert [p.name for p in (out / "work/features").iterdir()] == ["wave-00000"]
    before = (out / "work/features/wave-00000").stat().st_mtime_ns
    curate(load_curate_config(config), progress=False)
    assert (out / "work/features/wave-00000").stat().st_mtime_ns == before   # finished work is kept, not redone
    _same_result(out, clean[0])


def test_the_driver_killed_while_writing_resumes_to_the_clean_result(data, clean, micro_model):
    root, _ = data
    out = root / "killed-writing"
    shutil.copytree(clean[0], out)
    shutil.rmtree(out / "shards")
    shutil.rmtree(out / "work/groups")                                   # analysed and decided; nothing written
    config = config_file(root, out, micro_model)
    _run_and_kill(config, "kill_driver:write:1")
    # Groups whose tasks were already running may commit after the driver died: at least the first did.
    records = {p.name: p.read_text() for p in (out / "work/groups").glob("*.json")}
    assert records
    curate(load_curate_config(config), progress=False)
    assert all((out / "work/groups" / name).read_text() == text for name, text in records.items())  # kept as were
    _same_result(out, clean[0])


def test_a_group_renamed_but_not_recorded_is_written_again_once(data, clean, micro_model):
    """The window a kill can leave (deterministically here): a group's tars renamed into shards/ but its record
    not written, another group's attempt still in its .partial folder."""
    root, _ = data
    out = root / "torn-group"
    shutil.copytree(clean[0], out)
    (out / "work/groups/000001.json").unlink()                            # tars there, record missing
    (out / "shards/.g000002.partial").mkdir()
    (out / "shards/.g000002.partial/shard-000002-000000.tar").write_bytes(b"half a tar")
    (out / "work/groups/000002.json").unlink()
    curate(load_curate_config(config_file(root, out, micro_model)), progress=False)
    assert not (out / "shards/.g000002.partial").exists()
    _same_result(out, clean[0])


def test_a_changed_config_redoes_what_it_changes_and_refuses_the_rest(data, clean, micro_model, tmp_path):
    root, _ = data
    out = tmp_path / "copy"
    shutil.copytree(clean[0], out)
    summary = curate(load_curate_config(config_file(root, out, micro_model, top_fraction=0.5)), progress=False)
    table = decisions(out)
    assert summary["kept"] < clean[1]["kept"]
    assert sorted(read_output_keys(out / "shards")) == sorted(k for (_, k), r in table.items() if r["kept"])
    with pytest.raises(ConfigError, match="another model"):
        curate(load_curate_config(config_file(root, out, "mmp-test-micro")), progress=False)
    with pytest.raises(ConfigError, match="not empty"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "file").write_text("x")
        curate(load_curate_config(config_file(root, tmp_path / "other", micro_model)), progress=False)


def test_cli_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("inputs: [x]\noutput: y\nstages: [{type: embed, model: m}, {type: dedup, clusters: 5}, "
                   "{type: write}]\n")
    result = subprocess.run([sys.executable, "-m", "mmpretrain.cli", "curate", str(bad), "--no-progress",
                             "stages.1.clusters=0"], capture_output=True,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mmpretrain curate: error: c.yaml: stages[1] (dedup): clusters, kmeans_sample and kmeans_iterations must "
        "be >= 1"]


def test_without_an_embed_stage_only_reading_runs_and_balance_decides(data, local_ray, tmp_path):
    root, planted = data
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "inputs": [str(root / "in")], "output": str(tmp_path / "out"), "ray": {"num_cpus": 2},
        "stages": [{"type": "basic_filter", "min_caption_words": 2},
                   {"type": "balance", "entries": ["dog", "cat"], "per_entry": 5},
                   {"type": "write", "samples_per_shard": 100}]}))
    summary = curate(load_curate_config(config), progress=False)
    table = decisions(tmp_path / "out")
    assert "image_emb" not in pads.dataset(tmp_path / "out/work/features").schema.names
    # The rule, re-done naively from the decision table: counts over what reached balance, then per sample
    # "kept if any entry e it names draws uniform(seed, shard, key, e) < per_entry / count(e)".
    from mmpretrain.curate.balance import uniform

    reached = [r for r in table.values() if r["kept"] or r["stage"] == "balance"]
    entries = ["dog", "cat"]
    named = {id(r): [i for i, e in enumerate(entries) if e in r["caption"].split()] for r in reached}
    counts = {i: sum(i in named[id(r)] for r in reached) for i in range(len(entries))}
    for r in reached:
        expected = any(uniform(0, r["shard"], r["key"], i) < 5 / counts[i] for i in named[id(r)])
        assert r["kept"] == expected, r
    assert 0 < sum(r["kept"] for r in reached) < len(reached)
    assert summary["dropped"]["balance"]["no_entry_match"] == sum(
        1 for r in table.values() if r["reason"] == "no_entry_match")
    assert all(not any(w in ("dog", "cat") for w in r["caption"].split())
               for r in table.values() if r["reason"] == "no_entry_match")
    assert sorted(read_output_keys(tmp_path / "out/shards")) == sorted(k for (_, k), r in table.items() if r["kept"])


def test_address_joins_a_cluster_and_a_local_ray_gets_the_configured_resources(monkeypatch):
    import ray

    from mmpretrain.curate.config import RayResources
    from mmpretrain.curate.pipeline import ray_session

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    with ray_session(RayResources(num_cpus=3, object_store_mb=100), address="auto"):
        pass
    with ray_session(RayResources(num_cpus=3, object_store_mb=100), address=None):
        pass
    assert calls[0]["address"] == "auto" and "num_cpus" not in calls[0]   # a cluster's resources are its own
    assert calls[2]["num_cpus"] == 3 and calls[2]["object_store_memory"] == 100 * 2**20
    assert calls[2]["include_dashboard"] is False and calls[1] == calls[3] == "shutdown"
