"""Shards from strangers run no code: nothing is unpickled, and pipe:/remote URLs are refused unless allowed."""

import builtins
import io
import itertools
import pickle
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from mmpretrain.cli import main
from mmpretrain.data.augment import AugmentConfig, build_train_transform
from mmpretrain.data.config import DataConfig
from mmpretrain.data.loader import TrainLoader
from mmpretrain.data.stages import StageEnv
from mmpretrain.data.safe_tar import read_shard
from mmpretrain.data.sources import SourceConfig
from mmpretrain.errors import ConfigError
from mmpretrain.eval.datasets import load_retrieval, load_zeroshot
from mmpretrain.models import ModelConfig, build_model
from tests.conftest import COLOURS, micro_overrides, write_colour_shards


class _TouchOnUnpickle:
    """Unpickling this calls open(marker, "w"): the file appears if and only if something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _planted_shard(folder: Path, marker: Path) -> Path:
    """A shard of normal-looking samples, each also carrying the payload as .pyd, .pickle and .pth members."""
    folder.mkdir(parents=True)
    payload = pickle.dumps(_TouchOnUnpickle(marker))
    source = folder.parent / "clean"
    write_colour_shards(source, n_shards=1, per_shard=8)
    shard = folder / "shard-000000.tar"
    with tarfile.open(shard, "w") as out:
        for raw in wds.tarfile_to_samples()([{"url": str(next(source.glob("*.tar")))}]):
            members = {k: v for k, v in raw.items() if not k.startswith("__")}
            members.update({"pyd": payload, "pickle": payload, "pth": payload})
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{raw['__key__']}.{ext}")
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
    return shard


def test_a_planted_pickle_is_never_unpickled(tmp_path):
    control, marker = tmp_path / "control-marker", tmp_path / "marker"
    # The payload is live: plain unpickling, and webdataset's default decoding (what open_clip's pipeline runs,
    # `.decode("pilrgb")`), both execute it.
    pickle.loads(pickle.dumps(_TouchOnUnpickle(control)))
    assert control.exists()
    control.unlink()
    control_shard = _planted_shard(tmp_path / "control", control)
    list(wds.WebDataset(str(control_shard), shardshuffle=False).decode("pilrgb", handler=wds.ignore_and_continue))
    assert control.exists()

    # Our training stream, a training run, and the eval reader read the same kind of shard: no marker.
    shard = _planted_shard(tmp_path / "planted", marker)
    micro = build_model(ModelConfig(name="mmp-test-micro"))
    transform = build_train_transform(micro.preprocess, AugmentConfig())
    config = DataConfig(train=[str(shard.parent)], batch_size=4, num_workers=0, shuffle_buffer=4)
    loader = TrainLoader(config, StageEnv(config, transform, micro.tokenizer), seed=0)
    batches = list(itertools.islice(iter(loader), 4))
    assert all(b["image"].shape[0] == 4 for b in batches) and sum(loader.ledger.by_reason.values()) == 0  # used, none skipped
    assert main(["train", "demo", *micro_overrides(shard.parent, tmp_path / "run", steps=2), "eval.tasks=[]"]) == 0
    assert len(load_retrieval(str(shard.parent)).images) == 8
    assert len(load_zeroshot(str(shard.parent), list(COLOURS)).labels) == 8
    assert not marker.exists()


def test_undeclared_members_never_leave_the_reader(tmp_path):
    shard = _planted_shard(tmp_path / "planted", tmp_path / "marker")
    samples = [s for s in read_shard(str(shard), members={"png", "txt"})]
    assert len(samples) == 8 and all(set(s) == {"__key__", "__url__", "__offset__", "png", "txt"} for s in samples)


@pytest.mark.parametrize("spec", ["pipe:touch {marker}; cat {shard}", "https://example.com/shard-{{000..009}}.tar",
                                  "s3://bucket/shard.tar"])
def test_shell_and_remote_urls_are_refused_unless_allowed(spec, colour_shards, tmp_path, capsys):
    marker = tmp_path / "marker"
    url = spec.format(marker=marker, shard=next(colour_shards.glob("*.tar")))
    assert main(["train", "demo", f"data.train=['{url}']", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "refusing shard URL" in err and "data.allow_shell_urls=true" in err and len(err.splitlines()) == 1
    with pytest.raises(ConfigError, match="refusing shard URL"):
        list(read_shard(url, members={"png", "txt"}))  # the reader refuses on its own too
    with pytest.raises(ConfigError, match="refusing shard URL"):
        config = DataConfig(sources=[SourceConfig(name="a", shards=[url])])
        TrainLoader(config, StageEnv(config, None, None), seed=0)
    assert not marker.exists()


def test_pipe_urls_run_when_explicitly_allowed(colour_shards, tmp_path):
    shard = next(colour_shards.glob("*.tar"))
    samples = list(read_shard(f"pipe:cat {shard}", members={"png", "txt"}, allow_shell_urls=True))
    assert len(samples) == 12 and all("png" in s for s in samples)


def test_eval_and_train_decoders_take_only_images_text_and_json(tmp_path):
    from mmpretrain.data.decode import decode_sample

    payload = pickle.dumps(_TouchOnUnpickle(tmp_path / "marker"))
    raw = {"__key__": "k", "png": _png_bytes(), "txt": b"a caption", "pyd": payload, "pth": payload}
    sample = decode_sample(raw)
    assert sample.captions == ["a caption"] and sample.image.size == (8, 8)
    assert not (tmp_path / "marker").exists()


def _png_bytes() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG")
    return out.getvalue()
