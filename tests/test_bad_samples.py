"""Every bad sample and broken shard is a counted skip, never a crash; every readable clean sample arrives."""

import collections
import itertools
import json
import os

import pytest

from mmpretrain.cli import main
from mmpretrain.data.config import DataConfig
from mmpretrain.data.loader import ReaderStream
from mmpretrain.data.stages import StageEnv, build_stages
from mmpretrain.data.skips import SKIP_REASONS, SkipBudget
from mmpretrain.data.sources import assign_shards, resolve_sources
from mmpretrain.engine.metrics import read_metrics
from tests.conftest import micro_overrides, no_tokens, pixel_id
from tests.corrupt_shards import write_corrupt_shards


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    return write_corrupt_shards(tmp_path_factory.mktemp("corrupt") / "shards")


def _stream(corrupt, seed: int = 0):
    """Samples one by one, each with the skips met on the way to it."""
    config = DataConfig(train=[str(corrupt.folder)], batch_size=1, num_workers=0, shuffle_buffer=1)
    stages = build_stages(StageEnv(config, pixel_id, no_tokens))
    for batch in ReaderStream(resolve_sources(config.train, [], False), stages, config, seed=seed):
        yield {"image": batch["image"][0], "skips": batch["_origin"].skips}


def test_each_failure_kind_is_skipped_and_counted_and_every_clean_sample_arrives(corrupt):
    """Three passes over the fixture: each clean sample once per pass, each bad one skipped with its reason."""
    per_pass = len(corrupt.clean_ids)
    samples = list(itertools.islice(_stream(corrupt), 3 * per_pass))
    for pass_index in range(3):
        ids = [int(s["image"]) for s in samples[pass_index * per_pass:(pass_index + 1) * per_pass]]
        assert sorted(ids) == sorted(corrupt.clean_ids)  # nothing lost, nothing twice
    events = [e for s in samples for e in s["skips"]]
    # Skips before a pass's last clean sample travel with it; the trailing ones of the third pass are not read.
    seen = {(e.reason, os.path.basename(e.shard)) for e in events}
    assert seen == corrupt.bad_events
    distinct = {(e.reason, e.shard, e.key): e.count for e in events}  # one entry per bad sample or shard
    counted = collections.Counter()
    for (reason, _, _), count in distinct.items():
        counted[reason] += count
    assert dict(counted) == corrupt.skips
    assert set(counted) | set(SKIP_REASONS) == set(SKIP_REASONS)


def _seed_ending_with(corrupt, shard_name: str) -> int:
    """A seed whose first epoch reads `shard_name` last, so every skip of the epoch precedes a clean sample."""
    shards = sorted(str(p) for p in corrupt.folder.glob("*.tar"))
    return next(seed for seed in range(100) if assign_shards(shards, seed, 0, 0, 1)[-1].endswith(shard_name))


def test_training_over_corrupt_shards_logs_the_skip_counts(corrupt, tmp_path):
    """One epoch of clean samples in 4 steps of 5: the run completes and logs each reason's count."""
    seed = _seed_ending_with(corrupt, corrupt.last_clean_shard)
    overrides = micro_overrides(corrupt.folder, tmp_path, steps=4) + [
        "data.batch_size=5", "data.shuffle_buffer=1", f"train.seed={seed}", "train.log_every=4",
        "data.max_skip_fraction=0.6", "data.skip_window=10", "eval.tasks=[]"]
    assert len(corrupt.clean_ids) == 20
    assert main(["train", "demo", *overrides]) == 0
    record = [r for r in read_metrics(tmp_path / "micro" / "metrics.jsonl") if "loss" in r][-1]
    assert record["samples_seen"] == 20
    logged = {key.split("/")[-1]: int(v) for key, v in record.items() if key.startswith("data/skipped/")}
    assert logged == corrupt.skips
    assert record["data/skipped"] == sum(corrupt.skips.values())
    total = record["data/skipped"] + 20
    assert record["data/skip_fraction"] == pytest.approx(record["data/skipped"] / total)


def test_too_many_skips_stop_the_run_naming_the_worst_shards(corrupt, tmp_path, capsys):
    overrides = micro_overrides(corrupt.folder, tmp_path, steps=8) + [
        "data.batch_size=5", "data.shuffle_buffer=1", "train.log_every=1", "data.max_skip_fraction=0.05",
        "data.skip_window=10", "eval.tasks=[]"]
    assert main(["train", "demo", *overrides]) == 3
    err = capsys.readouterr().err
    assert "over the limit of 5.0% (data.max_skip_fraction)" in err and "Worst shards:" in err
    assert "shard-000000.tar" in err or "shard-000002.tar" in err
    assert len(err.strip().splitlines()) == 1
    last = read_metrics(tmp_path / "micro" / "metrics.jsonl")[-1]  # the counts that stopped it are on record
    assert last["data/skip_fraction"] > 0.05 and last["data/skipped"] > 0


def test_skip_budget_judges_a_sliding_window():
    budget = SkipBudget(max_fraction=0.1, window=100)
    assert budget.fraction([50, 0] + [0] * 10) is None  # fewer than 100 samples so far
    assert budget.fraction([90, 10] + [0] * 10) == pytest.approx(0.1) and not budget.exceeded(0.1)
    assert budget.fraction([190, 10] + [0] * 10) == 0.0  # the last 100 samples were all delivered
    # 30 skipped in the last 100: the early clean stretch no longer dilutes them.
    fraction = budget.fraction([260, 40] + [0] * 10)
    assert fraction == pytest.approx(30 / 100) and budget.exceeded(fraction)


def test_skip_counts_survive_a_checkpoint(corrupt, tmp_path):
    from mmpretrain.engine.checkpoint import list_checkpoints, load_checkpoint

    overrides = micro_overrides(corrupt.folder, tmp_path, steps=2) + [
        "data.batch_size=5", "data.shuffle_buffer=1", "data.max_skip_fraction=1.0", "eval.tasks=[]"]
    assert main(["train", "demo", *overrides]) == 0
    state = load_checkpoint(list_checkpoints(tmp_path / "micro" / "checkpoints")[-1])
    ledger = state["data"][0]["skips"]  # rank 0's part of the data state
    assert ledger["delivered"] == 10 and sum(ledger["by_reason"].values()) == sum(ledger["by_shard"].values()) > 0
    json.dumps(ledger)  # plain data: no pickled objects in the checkpoint's data state


def test_a_shard_that_vanished_is_counted_as_unreadable(tmp_path):
    from mmpretrain.data.safe_tar import ShardFailure, read_shard

    (failure,) = list(read_shard(str(tmp_path / "gone.tar"), members={"png", "txt"}, expected=7))
    assert isinstance(failure, ShardFailure) and failure.reason == "shard_unreadable" and failure.lost == 7
    assert "FileNotFoundError" in failure.detail


def test_big_members_are_never_read_into_memory(tmp_path):
    """A 20 MB undeclared member is passed over and a 20 MB image over the cap becomes a counted skip; neither is
    ever held in memory (traced allocations stay far below their size)."""
    import io
    import tarfile
    import tracemalloc

    from mmpretrain.data.skips import SampleLimits
    from mmpretrain.data.safe_tar import read_shard
    from mmpretrain.data.decode import decode_sample

    shard = tmp_path / "big.tar"
    small = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (16, 16)).save(small, "PNG")
    members = [("a.npy", b"\0" * 20_000_000), ("a.png", small.getvalue()), ("a.txt", b"ok"),
               ("b.png", b"\0" * 20_000_000), ("b.txt", b"too big")]
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    del members
    tracemalloc.start()
    samples = list(read_shard(str(shard), members={"png", "txt"}, max_member_bytes=1_000_000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000
    assert [s["__key__"] for s in samples] == ["a", "b"] and "npy" not in samples[0]
    assert decode_sample(samples[0], SampleLimits()).captions == ["ok"]
    with pytest.raises(Exception, match="member_too_large: .png of 20,000,000 bytes"):
        decode_sample(samples[1], SampleLimits())
