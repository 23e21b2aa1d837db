"""Sources mixed by weight: the observed ratio, determinism per seed, per-source epochs, and exact resume."""

from pathlib import Path

import pytest

from mmpretrain.data.config import DataConfig
from mmpretrain.data.sources import SourceConfig, StreamInfo, resolve_sources
from mmpretrain.errors import ConfigError
from tests.conftest import batch_ids, id_loader, write_id_shards


def _write_ids(folder: Path, first_id: int, n_shards: int, per_shard: int) -> None:
    write_id_shards(folder, first_id, [per_shard] * n_shards, sizes=False)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    _write_ids(root / "a", 0, n_shards=2, per_shard=10)      # ids 0..19
    _write_ids(root / "b", 1000, n_shards=2, per_shard=30)   # ids 1000..1059
    return [SourceConfig("a", [str(root / "a")], 0.7), SourceConfig("b", [str(root / "b")], 0.3)]


def _stream(sources, seed=0, **kwargs):
    config = DataConfig(sources=sources, batch_size=1, num_workers=0, shuffle_buffer=4, **kwargs)
    config.limits.min_side = 1
    return id_loader(config, seed=seed)


def _ids(loader, n: int) -> list[int]:
    return batch_ids(loader, n)


def test_observed_ratio_follows_the_weights(two_sources):
    ids = _ids(_stream(two_sources), 3000)
    share_a = sum(i < 1000 for i in ids) / len(ids)
    assert share_a == pytest.approx(0.7, abs=0.03)  # binomial sd ~0.008


def test_each_source_runs_its_own_epochs(two_sources):
    ids = _ids(_stream(two_sources), 3000)
    a, b = [i for i in ids if i < 1000], [i for i in ids if i >= 1000]
    for sequence, size in ((a, 20), (b, 60)):
        for epoch in range(len(sequence) // size):
            assert sorted(sequence[epoch * size:(epoch + 1) * size]) == sorted(set(sequence[:size]))
            assert len(set(sequence[:size])) == size  # every sample of the source once per epoch of it


def test_mixing_is_deterministic_per_seed(two_sources):
    assert _ids(_stream(two_sources, seed=1), 200) == _ids(_stream(two_sources, seed=1), 200)
    assert _ids(_stream(two_sources, seed=1), 200) != _ids(_stream(two_sources, seed=2), 200)


@pytest.mark.parametrize("resampled", [False, True])
def test_a_mixed_stream_resumes_at_the_next_sample(two_sources, resampled):
    whole = _ids(_stream(two_sources, resampled=resampled), 150)
    interrupted = _stream(two_sources, resampled=resampled)
    assert _ids(interrupted, 100) == whole[:100]
    resumed = _stream(two_sources, resampled=resampled)
    resumed.load_state_dict([interrupted.state_dict()])
    assert _ids(resumed, 50) == whole[100:]


def test_start_up_statement_names_each_source(two_sources):
    info = StreamInfo(resolve_sources([], two_sources, False))
    line = info.describe(run_samples=1000)
    assert "a: an unknown number of samples (no sizes.json) per epoch from 2 shards, weight 70%" in line
    assert "b:" in line and "weight 30%" in line


def test_bad_source_configs_are_refused(two_sources, tmp_path):
    with pytest.raises(ConfigError, match="both set"):
        resolve_sources(["x"], two_sources, False)
    with pytest.raises(ConfigError, match="weight > 0"):
        resolve_sources([], [SourceConfig("a", two_sources[0].shards, 0.0)], False)
    with pytest.raises(ConfigError, match="unique"):
        resolve_sources([], [two_sources[0], two_sources[0]], False)


def test_sources_load_from_yaml(tmp_path):
    from mmpretrain.config import load_config

    path = tmp_path / "mix.yaml"
    path.write_text("data:\n  sources:\n    - {name: web, shards: [/data/web], weight: 0.7}\n"
                    "    - {name: curated, shards: ['/data/cur/shard-{000000..000009}.tar'], weight: 0.3}\n")
    config = load_config(path, ["data.sources[1].weight=0.5"])
    assert [(s.name, s.weight) for s in config.data.sources] == [("web", 0.7), ("curated", 0.5)]
    with pytest.raises(ConfigError, match="wieght"):
        load_config(path, ["data.sources[0].wieght=1"])
