"""2 CPU processes under torchrun, DeepSpeed ZeRO-2, ZeRO-3 and ZeRO-2 with optimizer offload, through the real CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmpretrain.engine.checkpoint import list_checkpoints, load_checkpoint, model_state
from mmpretrain.engine.export import export_open_clip
from mmpretrain.engine.metrics import read_metrics
from mmpretrain.models import ModelConfig, build_model
from tests.conftest import micro_overrides, write_colour_shards

REPO = Path(__file__).resolve().parents[2]


def torchrun(nproc: int, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    # DeepSpeed compiles a small C++ op on first use; cache it across tests and runs (gitignored).
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(REPO / ".torch_extensions"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "mmpretrain.cli", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ds") / "shards"
    write_colour_shards(folder, n_shards=4, per_shard=8)
    return folder


def test_zero2_and_zero3_train_identically_on_two_processes(shards, tmp_path):
    """ZeRO stages shard state differently but compute the same maths: identical loss sequences. Each run
    leaves DeepSpeed's sharded checkpoints (exact resume) and a consolidated model (eval, export)."""
    eval_task = ("eval.tasks=[{name: colours, kind: zeroshot, data: " + str(shards) + ", label_key: label,"
                 " classnames: [red, green, blue], templates: ['a {} square']}]")
    losses = {}
    # zero2-offload: ZeRO-Offload keeps the optimizer in CPU memory and steps it with DeepSpeedCPUAdam.
    variants = {"zero2": ["engine.deepspeed_config=zero2"], "zero3": ["engine.deepspeed_config=zero3"],
                "zero2-offload": ["engine.deepspeed_config=zero2", "engine.offload_optimizer=true"]}
    for zero, engine in variants.items():
        overrides = micro_overrides(shards, tmp_path / zero, steps=4) + engine + [
            "data.batch_size=4", "engine.name=deepspeed", "train.checkpoint_every=2", "train.log_every=1",
            "optim.min_lr_ratio=1.0", eval_task]
        done = torchrun(2, ["train", "demo", *overrides], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        run_dir = tmp_path / zero / "micro"
        records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
        assert [r["step"] for r in records] == [1, 2, 3, 4]  # rank 0 alone writes the log
        assert records[-1]["samples_seen"] == 4 * 4 * 2  # steps x per-rank batch x ranks
        assert (run_dir / "results.json").is_file()
        losses[zero] = [r["loss"] for r in records]

        checkpoints = run_dir / "checkpoints"
        assert (checkpoints / "step-000000004").is_dir() and (checkpoints / "step-000000002").is_dir()
        state = load_checkpoint(list_checkpoints(checkpoints)[-1])
        assert state["step"] == 4
        model = build_model(ModelConfig(name="mmp-test-micro")).model
        model.load_state_dict(model_state(state))  # complete and unsharded, also under ZeRO-3
        out = export_open_clip(run_dir, tmp_path / zero / "export")
        assert (out / "open_clip_model.safetensors").is_file()
        if zero == "zero2":  # exact DeepSpeed resume: sharded optimizer state, step and both ranks' data streams
            resumed = torchrun(2, ["train", "demo", *overrides, "train.steps=6", "--resume", "latest"], tmp_path)
            assert resumed.returncode == 0, resumed.stderr[-3000:]
            after = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
            assert [r["step"] for r in after] == [1, 2, 3, 4, 5, 6]
            # An uninterrupted 6-step run (constant lr after warmup, so the step budget changes nothing).
            whole = torchrun(2, ["train", "demo", *overrides, "train.steps=6", "run_name=whole", "eval.tasks=[]"],
                             tmp_path)
            assert whole.returncode == 0, whole.stderr[-3000:]
            expected = [r["loss"] for r in read_metrics(tmp_path / zero / "whole" / "metrics.jsonl") if "loss" in r]
            torch.testing.assert_close(torch.tensor([r["loss"] for r in after]), torch.tensor(expected),
                                       rtol=1e-6, atol=1e-6)
            # Elastic: the same run resumed on 1 process. DeepSpeed's partitions of 2 ranks are converted to its
            # universal format and repartitioned; the data readers' unread samples are dealt out anew.
            single = torchrun(1, ["train", "demo", *overrides, "train.steps=8", "--resume", "latest"], tmp_path)
            assert single.returncode == 0, single.stderr[-3000:]
            assert "resuming data from 2 rank(s) x 1 reader(s) onto 1 x 1" in single.stderr
            assert (checkpoints / "step-000000006" / "universal" / "zero").is_dir()
            records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
            assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6, 7, 8]
            # Counted, not step x the new layout's batch: 6 steps of 2 ranks x 4, then 2 steps of 1 rank x 4
            assert records[-1]["samples_seen"] == 6 * 2 * 4 + 2 * 4
    assert losses["zero2"][-1] < losses["zero2"][0]
    torch.testing.assert_close(torch.tensor(losses["zero2"]), torch.tensor(losses["zero3"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(losses["zero2"]), torch.tensor(losses["zero2-offload"]),
                               rtol=1e-5, atol=1e-6)

    # GradCache under ZeRO-2: 2 micro-batches of 2 per rank are the same contrastive batch as 4 at once, so the
    # loss sequence (same samples, same order) is the batch-4 one. (ZeRO-3 + accumulation is refused for now.)
    overrides = micro_overrides(shards, tmp_path / "accum", steps=4) + [
        "data.batch_size=2", "train.accum_steps=2", "engine.name=deepspeed", "engine.deepspeed_config=zero2",
        "train.log_every=1", "optim.min_lr_ratio=1.0", "eval.tasks=[]"]
    done = torchrun(2, ["train", "demo", *overrides], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [r for r in read_metrics(tmp_path / "accum" / "micro" / "metrics.jsonl") if "loss" in r]
    assert records[-1]["samples_seen"] == 4 * 2 * 2 * 2  # steps x micro-batch x accum x ranks
    torch.testing.assert_close(torch.tensor([r["loss"] for r in records]), torch.tensor(losses["zero2"][:4]),
                               rtol=1e-5, atol=1e-6)


def test_a_diverging_deepspeed_run_stops_on_every_rank_before_a_nan_checkpoint(shards, tmp_path):
    """optim.lr=1e6 under ZeRO-2 on 2 ranks: the loss goes non-finite, both ranks stop at the same step with exit 3,
    and no checkpoint holds NaN (the one of step 1 survives keep-2)."""
    overrides = micro_overrides(shards, tmp_path / "runs", steps=6) + [
        "engine.name=deepspeed", "engine.deepspeed_config=zero2", "eval.tasks=[]", "optim.lr=1e6",
        "train.checkpoint_every=1", "train.log_every=1", "data.batch_size=4"]
    done = torchrun(2, ["train", "demo", *overrides], tmp_path)
    assert done.returncode != 0 and "is not finite, the run diverged" in done.stderr, done.stderr[-3000:]
    checkpoints = list_checkpoints(tmp_path / "runs" / "micro" / "checkpoints")
    assert checkpoints, "the step before the divergence is kept"
    for path in checkpoints:
        state = model_state(load_checkpoint(path))
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path.name


def test_three_towers_with_missing_modalities_train_under_deepspeed_on_two_processes(tmp_path):
    """configs/bind.yaml (image, text, audio; every tower bound to text; samples lacking image or audio) under
    ZeRO-2 on 2 ranks, then resumed exactly: the masked pair losses hold up across ranks and a checkpoint."""
    from tests.conftest import audio_overrides, keep_config_towers

    data = tmp_path / "shards"
    write_colour_shards(data, n_shards=4, per_shard=8, audio=True, missing_every={"image": 3, "flac": 4})
    overrides = keep_config_towers(micro_overrides(data, tmp_path / "runs", steps=4)) + audio_overrides() + [
        "engine.name=deepspeed", "engine.deepspeed_config=zero2", "eval.tasks=[]", "train.log_every=1",
        "data.batch_size=4", "optim.min_lr_ratio=1.0", "run_name=bind", "train.checkpoint_every=2"]
    done = torchrun(2, ["train", "bind", *overrides], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [r for r in read_metrics(tmp_path / "runs" / "bind" / "metrics.jsonl") if "loss" in r]
    assert len(records) == 4 and all(r["pair/audio_text/loss"] > 0 and r["pair/image_text/loss"] > 0 for r in records)
    # kill-free resume from step 2 replays steps 3-4 with the same losses (masks, pairs and heads restored)
    checkpoints = tmp_path / "runs" / "bind" / "checkpoints"
    for stale in [p for p in checkpoints.iterdir() if "000000004" in p.name]:
        if stale.is_dir():
            import shutil
            shutil.rmtree(stale)
        else:
            stale.unlink()
    (tmp_path / "runs" / "bind" / "metrics.jsonl").rename(tmp_path / "first.jsonl")
    resumed = torchrun(2, ["train", "bind", *overrides, "--resume", "latest"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = [r for r in read_metrics(tmp_path / "runs" / "bind" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in again] == [3, 4]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in again]),
                               torch.tensor([r["loss"] for r in records[2:]]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["clap", "lit-audio"])
def test_the_clap_and_locked_tower_configs_train_under_deepspeed(tmp_path, name):
    """configs/clap.yaml (audio-text only) and configs/lit-audio.yaml (image and text towers locked: DeepSpeed gets
    only the audio tower and its head to optimise) under ZeRO-2 on 2 ranks; the locked towers do not move."""
    from tests.conftest import audio_overrides, keep_config_towers

    data = tmp_path / "shards"
    write_colour_shards(data, n_shards=4, per_shard=8, audio=True)
    overrides = keep_config_towers(micro_overrides(data, tmp_path / "runs", steps=3)) + audio_overrides() + [
        "engine.name=deepspeed", "engine.deepspeed_config=zero2", "eval.tasks=[]", "train.log_every=1",
        "data.batch_size=4", f"run_name={name}", "train.checkpoint_every=1", "train.keep_checkpoints=3"]
    done = torchrun(2, ["train", name, *overrides], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [r for r in read_metrics(tmp_path / "runs" / name / "metrics.jsonl") if "loss" in r]
    assert len(records) == 3 and all(r["loss"] > 0 for r in records)
    first, last = (model_state(load_checkpoint(p)) for p in list_checkpoints(tmp_path / "runs" / name / "checkpoints")[::2])
    moved = {k for k in last if last[k].is_floating_point() and not torch.equal(first[k], last[k])}
    assert any(k.startswith("towers.audio.") for k in moved)
    if name == "lit-audio":
        assert not any(k.startswith(("towers.image.", "towers.text.")) for k in moved), sorted(moved)[:5]
