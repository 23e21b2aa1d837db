import itertools
from typing import NamedTuple

import pytest
import torch

from mmpretrain.data.augment import AugmentConfig, CropFirstTransform, build_train_transform
from mmpretrain.data.config import DataConfig
from mmpretrain.data.loader import TrainLoader
from mmpretrain.data.sources import assign_shards, check_shard_count
from mmpretrain.data.stages import StageEnv
from mmpretrain.errors import ConfigError, DataError
from mmpretrain.models import ModelConfig, build_model
from mmpretrain.models.towers import Tokenizer
from tests.conftest import no_tokens, pixel_id, write_colour_shards


class MicroInputs(NamedTuple):
    train_transform: CropFirstTransform
    tokenizer: Tokenizer


@pytest.fixture(scope="module")
def micro() -> MicroInputs:
    # The micro model's transform and tokenizer, built as training builds them.
    built = build_model(ModelConfig(name="mmp-test-micro"))
    return MicroInputs(build_train_transform(built.preprocess, AugmentConfig()), built.tokenizer)


def build_train_loader(config, transform, tokenizer, seed, rank=0, world_size=1):
    loader = TrainLoader(config, StageEnv(config, transform, tokenizer), seed, rank, world_size)
    return loader, loader.info


def test_batches_have_model_input_shapes(colour_shards, micro):
    config = DataConfig(train=[str(colour_shards)], batch_size=5, num_workers=0, shuffle_buffer=4)
    loader, info = build_train_loader(config, micro.train_transform, micro.tokenizer, seed=0)
    assert info.samples_per_epoch == 24 and len(info.shards) == 2
    assert "24 samples per epoch from 2 shards" in info.describe()
    batches = list(itertools.islice(iter(loader), 7))  # 35 samples: the stream runs past one epoch
    for batch in batches:
        # uint8: the workers hand over unnormalised images (data.augment.uint8_transfer), finished on the device
        assert batch["image"].shape == (5, 3, 32, 32) and batch["image"].dtype == torch.uint8
        assert batch["text"].shape == (5, 16) and batch["text"].dtype == torch.long


def test_stream_runs_with_worker_processes(tmp_path, micro):
    write_colour_shards(tmp_path / "s", n_shards=4, per_shard=6)
    config = DataConfig(train=[str(tmp_path / "s")], batch_size=4, num_workers=2, shuffle_buffer=4)
    loader, _ = build_train_loader(config, micro.train_transform, micro.tokenizer, seed=0)
    batches = list(itertools.islice(iter(loader), 3))
    assert all(b["image"].shape[0] == 4 for b in batches)


@pytest.mark.parametrize("n_shards,slots", [(8, 4), (9, 4), (5, 1), (12, 6)])
def test_readers_get_disjoint_shards_covering_all(n_shards, slots):
    shards = [f"s{i}" for i in range(n_shards)]
    for epoch in range(3):
        parts = [assign_shards(shards, seed=1, epoch=epoch, slot=s, slots=slots) for s in range(slots)]
        flat = [s for part in parts for s in part]
        assert sorted(flat) == sorted(shards) and len(flat) == len(set(flat))


def test_shard_order_changes_between_epochs_but_not_between_calls():
    shards = [f"s{i}" for i in range(20)]
    epoch0 = assign_shards(shards, 0, 0, 0, 1)
    assert epoch0 == assign_shards(shards, 0, 0, 0, 1)
    assert epoch0 != assign_shards(shards, 0, 1, 0, 1)


def test_too_few_shards_for_readers_is_refused():
    with pytest.raises(ConfigError, match="3 shards cannot feed 2 ranks x 2 workers"):
        check_shard_count(3, world_size=2, num_workers=2)
    check_shard_count(4, world_size=2, num_workers=2)


def test_missing_or_empty_training_data_is_a_clear_error(tmp_path, micro):
    with pytest.raises(ConfigError, match="data.train is empty"):
        build_train_loader(DataConfig(train=[]), micro.train_transform, micro.tokenizer, seed=0)
    with pytest.raises(FileNotFoundError, match="no shards found"):
        build_train_loader(DataConfig(train=[str(tmp_path / "none")]), micro.train_transform, micro.tokenizer, 0)


def test_multi_positive_and_hard_negative_batches(tmp_path, micro):
    write_colour_shards(tmp_path / "neg", n_shards=1, per_shard=8, hard_negatives=True)
    config = DataConfig(train=[str(tmp_path / "neg")], batch_size=4, num_workers=0, shuffle_buffer=1,
                        positives_per_sample=2, negatives_per_sample=3)
    loader, _ = build_train_loader(config, micro.train_transform, micro.tokenizer, seed=0)
    batch = next(iter(loader))
    assert batch["text"].shape == (4, 2, 16) and batch["negative_text"].shape == (4, 3, 16)
    # The hard negatives of a sample name the other colours, never its own caption.
    for texts, negatives in zip(batch["text"], batch["negative_text"]):
        assert not {tuple(t.tolist()) for t in texts} & {tuple(n.tolist()) for n in negatives}


def test_hard_negatives_requested_but_absent_is_a_clear_error(colour_shards, micro):
    config = DataConfig(train=[str(colour_shards)], batch_size=4, num_workers=0, negatives_per_sample=1)
    loader, _ = build_train_loader(config, micro.train_transform, micro.tokenizer, seed=0)
    with pytest.raises(DataError, match=r"negatives_invalid .*no hard negatives \(<key>.neg.json\)"):
        next(iter(loader))


def test_resampled_readers_draw_with_replacement_deterministically(tmp_path, micro):
    write_colour_shards(tmp_path / "r", n_shards=3, per_shard=4)
    config = DataConfig(train=[str(tmp_path / "r")], batch_size=4, num_workers=0, shuffle_buffer=1, resampled=True)

    def draws_of(rank: int) -> list[list[str]]:
        plan = build_train_loader(config, micro.train_transform, micro.tokenizer, seed=5, rank=rank,
                                  world_size=4)[0].stream.plan(0, 0, 1)
        return [[span.shard for span in plan.spans(p)] for p in range(200)]

    # 3 shards feed 4 ranks: no shard-count error in resampled mode, and each rank gets its own draw sequence.
    draws = {rank: draws_of(rank) for rank in range(4)}
    flat = [shard for passes in draws[0] for shard in passes]
    assert all(len(p) == 3 for p in draws[0]) and len(set(map(tuple, draws[0]))) > 1  # with replacement
    counts = [flat.count(s) for s in sorted(set(flat))]
    assert len(counts) == 3 and min(counts) > 0.28 * len(flat)  # uniform: each ~1/3 of 600 draws
    assert draws[0] != draws[1]
    assert draws[0] == draws_of(0)  # seeded: reproducible
    loader, info = build_train_loader(config, micro.train_transform, micro.tokenizer, seed=5, rank=0,
                                      world_size=4)
    assert "resampled" in info.describe()
    assert next(iter(loader))["image"].shape == (4, 3, 32, 32)


def test_every_sample_is_read_exactly_once_per_epoch_across_ranks_and_workers(tmp_path):
    import io
    import json

    import webdataset as wds
    from PIL import Image

    from mmpretrain.data.loader import ReaderStream
    from mmpretrain.data.sources import resolve_sources
    from mmpretrain.data.stages import build_stages

    folder, total = tmp_path / "ids", 0
    folder.mkdir()
    for s, count in enumerate([5, 8, 3, 8, 6, 2]):  # uneven shards
        with wds.TarWriter(str(folder / f"shard-{s:06d}.tar")) as sink:
            for _ in range(count):
                png = io.BytesIO()
                Image.new("RGB", (2, 2), (total // 256, total % 256, 0)).save(png, format="PNG")
                sink.write({"__key__": f"{total:09d}", "png": png.getvalue(), "txt": "x",
                            "json": json.dumps({}).encode()})
                total += 1
    sources = resolve_sources([str(folder)], [], allow_shell_urls=False)
    config = DataConfig(train=[str(folder)], batch_size=1, num_workers=2, shuffle_buffer=4)
    config.limits.min_side = 1  # 2x2 images carry the ids
    seen: list[int] = []
    for rank in range(2):
        stages = build_stages(StageEnv(config, pixel_id, no_tokens))
        stream = ReaderStream(sources, stages, config, seed=3, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2, collate_fn=_as_is)
        for batch in itertools.islice(loader, 4 * total):  # long enough for every reader to pass its epoch 0
            if batch["_origin"].state.sources[0].pass_index == 0:  # its reader still in pass 0 after it
                seen.append(int(batch["image"]))
    assert sorted(seen) == list(range(total))  # each sample once in epoch 0, over 2 ranks x 2 workers


def _as_is(batch):
    return batch
