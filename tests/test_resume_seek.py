"""Resume that seeks: exact continuation, bounded re-reading, and elastic resume onto another layout."""

import logging
import tarfile

import pytest

from mmpretrain.data.config import DataConfig
from mmpretrain.data.cursor import PassPlan, SourceCursor
from mmpretrain.data.safe_tar import read_samples_at, read_shard
from mmpretrain.data.sources import resolve_sources
from mmpretrain.errors import ConfigError
from tests.conftest import batch_ids, id_loader, write_id_shards

COUNTS = [5, 7, 3, 6, 8, 4, 6, 9]  # 48 samples in uneven shards


def _config(folder, **kwargs) -> DataConfig:
    config = DataConfig(train=[str(folder)], **{"batch_size": 1, "num_workers": 2, "shuffle_buffer": 4, **kwargs})
    config.limits.min_side = 1  # 2x2 images carry the ids
    return config


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resumed_loader_continues_with_exactly_the_next_batches(tmp_path, num_workers):
    write_id_shards(tmp_path / "s", 0, COUNTS)
    config = _config(tmp_path / "s", batch_size=3, num_workers=num_workers, shuffle_buffer=5)
    whole = batch_ids(id_loader(config, seed=2), 40)  # 120 samples: into the third pass
    interrupted = id_loader(config, seed=2)
    assert batch_ids(interrupted, 13) == whole[:39]  # mid-shard, mid-pass, buffer full
    resumed = id_loader(config, seed=2)
    resumed.load_state_dict([interrupted.state_dict()])
    assert batch_ids(resumed, 27) == whole[39:]


class CountingReads:
    """Wraps the tar reading functions, counting the samples they hand out."""

    def __init__(self) -> None:
        self.read = self.fetched = 0

    def read_shard(self, *args, **kwargs):
        for item in read_shard(*args, **kwargs):
            self.read += 1
            yield item

    def read_samples_at(self, shard, offsets, *args):
        found = read_samples_at(shard, offsets, *args)
        self.fetched += len(found)
        return found


@pytest.mark.parametrize("suffix", ["tar", "tar.gz"])
def test_resume_reads_one_buffer_and_the_rest_of_one_shard_not_the_pass(tmp_path, suffix):
    folder = tmp_path / "big"
    write_id_shards(folder, 0, [50] * 10)
    if suffix == "tar.gz":  # compressed shards cannot be entered at an offset: read from their start
        for tar in sorted(folder.glob("*.tar")):
            with tarfile.open(tar) as src, tarfile.open(f"{tar}.gz", "w:gz") as dst:
                for member in src:
                    dst.addfile(member, src.extractfile(member))
            tar.unlink()
    shards = sorted(str(p) for p in folder.glob(f"*.{suffix}"))
    (source,) = resolve_sources(shards, [], False)
    plan = PassPlan(source, 0, seed=0, rank=0, reader=0, num_readers=1, world_size=1, resampled=False)
    args = (frozenset({"png", "txt"}), False, 2**20)
    uninterrupted = SourceCursor(plan, buffer_size=8, read_args=args)
    for _ in range(300):  # six shards into the pass
        next(uninterrupted)
    saved = uninterrupted.snapshot()
    expected = [item["__key__"] for _, _, item in (next(uninterrupted) for _ in range(120))]

    counter = CountingReads()
    resumed = SourceCursor(plan, buffer_size=8, read=counter.read_shard, fetch=counter.read_samples_at,
                           read_args=args, state=saved)
    first = next(resumed)
    assert counter.fetched == 8  # the buffer, read back by offset
    assert counter.read <= 2  # then the shard is entered where it was left (a replay would read 300)
    keys = [first[2]["__key__"]] + [item["__key__"] for _, _, item in (next(resumed) for _ in range(119))]
    assert keys == expected  # into the next pass too
    assert counter.read <= 120 + 50


def _epoch_zero(loaders, seen_before: list[int]) -> list[int]:
    """Read `loaders` (ranks of one job) until every reader has left pass 0; returns the pass-0 sample ids."""
    seen, done = [], set()
    for _ in range(400):
        for rank, loader in enumerate(loaders):
            (sample,) = batch_ids(loader, 1)
            if loader.readers[loader.last_reader].sources[0].pass_index == 0:  # its reader still in pass 0
                seen.append(sample)
            else:
                done.add((rank, loader.last_reader))
        if len(done) == sum(loader.num_readers for loader in loaders):
            return seen_before + seen
    raise AssertionError("the readers never left pass 0")


@pytest.mark.parametrize("old_ranks,new_ranks", [(2, 1), (1, 2)])
def test_resume_onto_another_number_of_ranks_delivers_each_sample_of_the_epoch_once(
        tmp_path, caplog, old_ranks, new_ranks):
    write_id_shards(tmp_path / "s", 0, COUNTS)
    config = _config(tmp_path / "s")
    old = [id_loader(config, seed=1, rank=r, world_size=old_ranks) for r in range(old_ranks)]
    consumed = [i for rank, loader in enumerate(old) for i in batch_ids(loader, 9 - 4 * rank)]
    states = [loader.state_dict() for loader in old]
    with caplog.at_level(logging.WARNING):
        new = [id_loader(config, seed=1, rank=r, world_size=new_ranks) for r in range(new_ranks)]
        for loader in new:
            loader.load_state_dict(states)
    assert f"resuming data from {old_ranks} rank(s) x 2 reader(s) onto {new_ranks} x 2" in caplog.text
    epoch = _epoch_zero(new, consumed)
    assert sorted(epoch) == list(range(sum(COUNTS)))  # every sample once: none twice, none lost


def test_resume_onto_another_worker_count_delivers_each_sample_of_the_epoch_once(tmp_path):
    write_id_shards(tmp_path / "s", 0, COUNTS)
    old = id_loader(_config(tmp_path / "s", num_workers=2), seed=4)
    consumed = batch_ids(old, 11)
    new = id_loader(_config(tmp_path / "s", num_workers=3), seed=4)
    new.load_state_dict([old.state_dict()])
    assert sorted(_epoch_zero([new], consumed)) == list(range(sum(COUNTS)))


def test_elastic_resume_keeps_the_skip_counts_once(tmp_path):
    write_id_shards(tmp_path / "s", 0, COUNTS)
    old = [id_loader(_config(tmp_path / "s"), rank=r, world_size=2) for r in range(2)]
    for loader in old:
        batch_ids(loader, 3)
        loader.ledger.by_reason["image_unreadable"] += 2
    states = [loader.state_dict() for loader in old]
    new = [id_loader(_config(tmp_path / "s"), rank=r, world_size=1) for r in range(1)]
    new[0].load_state_dict(states)
    assert new[0].ledger.delivered == 6 and new[0].ledger.by_reason["image_unreadable"] == 4


def test_a_data_position_of_another_source_count_or_format_is_refused(tmp_path):
    write_id_shards(tmp_path / "a", 0, [4, 4])
    loader = id_loader(_config(tmp_path / "a"))
    batch_ids(loader, 2)
    state = loader.state_dict()
    two_sources = dict(state, readers={k: dict(v, sources=v["sources"] * 2) for k, v in state["readers"].items()})
    with pytest.raises(ConfigError, match="different number of sources"):
        id_loader(_config(tmp_path / "a")).load_state_dict([two_sources])
    with pytest.raises(ConfigError, match=r"format \[1\]"):
        id_loader(_config(tmp_path / "a")).load_state_dict([{"position": {}, "skips": {}}])


def test_a_sample_read_back_by_offset_is_the_one_read_in_order_even_at_a_truncation(tmp_path):
    """The last, partial sample of a truncated shard (its members read before the break) comes back the same."""
    write_id_shards(tmp_path / "t", 0, [6])
    shard = tmp_path / "t" / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]  # 000000005.txt
    shard.write_bytes(shard.read_bytes()[:last.offset_data])  # the break: its header read, its data gone
    members = frozenset({"png", "txt"})
    in_order = [item for item in read_shard(str(shard), members) if isinstance(item, dict)]
    assert in_order[-1]["__key__"] == "000000005" and "txt" not in in_order[-1]  # partial, its png kept
    again = read_samples_at(str(shard), [s["__offset__"] for s in in_order], members)
    assert [again[s["__offset__"]] for s in in_order] == in_order


def test_a_handed_over_sample_that_is_gone_counts_as_one_lost_not_its_shard(tmp_path):
    from mmpretrain.data.cursor import CursorState, ShardSpan
    from mmpretrain.data.safe_tar import ShardFailure

    write_id_shards(tmp_path / "s", 0, [50, 50])
    (source,) = resolve_sources([str(tmp_path / "s")], [], False)
    gone = str(tmp_path / "s" / "missing.tar")
    plan = PassPlan(source, 0, seed=0, rank=0, reader=0, num_readers=1, world_size=1, resampled=False)
    state = CursorState(spans=[ShardSpan(gone, 4096, limit=1).to_list(), ShardSpan(source.shards[0]).to_list()])
    cursor = SourceCursor(plan, buffer_size=1, read_args=(frozenset({"png", "txt"}), False, 2**20), state=state)
    _, _, first = next(cursor)
    assert isinstance(first, ShardFailure) and first.lost == 1


def test_data_workers_leave_the_preemption_signals_to_the_training_process(tmp_path):
    """torchrun and SLURM signal a rank's whole process group: a worker must neither die of SIGTERM/SIGUSR1 nor
    act on them (the training process checkpoints, then its workers exit with it)."""
    import signal

    import torch

    from mmpretrain.data.stages import register_stage, registered_stages

    if "test_signal_probe" not in registered_stages():
        @register_stage("test_signal_probe")
        def _probe(env):
            def stage(sample, context):
                ignored = all(signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGTERM, signal.SIGUSR1))
                return {**sample, "image": torch.tensor(int(ignored))}
            return stage

    write_id_shards(tmp_path / "s", 0, [4, 4])
    config = _config(tmp_path / "s", num_workers=2, stages=["member_sizes", "test_signal_probe"])
    assert batch_ids(id_loader(config), 4) == [1, 1, 1, 1]
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN  # the training process keeps its own handlers
