"""Bad eval samples are counted skips: metrics over the usable samples, `<kind>/<name>/skipped`, one warning, and
one error naming a task with nothing usable. Eval shards go through training's tar reader: declared members only,
none over the member size cap."""

from __future__ import annotations

import io
import json
import logging
import tarfile
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image
from torch import nn

from mmpretrain.errors import DataError
from mmpretrain.eval.datasets import load_retrieval_shards, load_zeroshot, load_zeroshot_shards
from mmpretrain.eval.harness import EvalConfig, EvalTaskConfig, format_table, run_eval
from tests.test_eval_harness import CLASSNAMES, COLOURS, Adapter, tiny_clip  # noqa: F401  (tiny_clip: a fixture)

Sample = tuple[str, dict[str, bytes]]  # key, {extension: bytes}


def _png(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((64, 48)).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]  # the header opens; the pixels fail to decode


def _good(i: int) -> Sample:
    name = CLASSNAMES[i % 3]
    return f"good{i:03d}", {"png": _png(COLOURS[name]), "txt": f"a {name} square number {i}".encode(),
                            "json": json.dumps({"label": name}).encode()}


def _write_tar(path: Path, samples: list[Sample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _cut_inside(path: Path, member: str) -> None:
    """Truncate a tar a few bytes into `member`'s data, as an interrupted copy would."""
    with tarfile.open(path) as tar:
        offset = tar.getmember(member).offset_data
    path.write_bytes(path.read_bytes()[:offset + 10])


def _write_bad_eval_shards(folder: Path) -> tuple[list[Sample], list[Sample]]:
    """Two shards: the first holds an unreadable image, a sample without a label and one with an empty caption
    among good samples; the second is cut inside its third sample (sizes.json says it held four).

    Returns the samples zero-shot and retrieval can use, in reading order."""
    good = [_good(i) for i in range(8)]
    unreadable: Sample = ("bad-image", {"jpg": _truncated_jpeg(), "txt": b"a red square",
                                        "json": json.dumps({"label": "red"}).encode()})
    unlabelled: Sample = ("no-label", {**_good(9)[1], "json": json.dumps({"source": "web"}).encode()})
    uncaptioned: Sample = ("bad-caption", {**_good(10)[1], "txt": b" \n\t"})
    first = [good[0], unreadable, good[1], unlabelled, good[2], uncaptioned, good[3]]
    _write_tar(folder / "shard-000000.tar", first)
    _write_tar(folder / "shard-000001.tar", good[4:])
    _cut_inside(folder / "shard-000001.tar", "good006.png")
    (folder / "sizes.json").write_text(json.dumps({"shard-000000.tar": 7, "shard-000001.tar": 4}))
    zeroshot = [good[0], good[1], good[2], uncaptioned, good[3], good[4], good[5]]
    retrieval = [good[0], good[1], unlabelled, good[2], good[3], good[4], good[5]]
    return zeroshot, retrieval


def _tasks(zeroshot_data: Path, retrieval_data: Path) -> EvalConfig:
    return EvalConfig(batch_size=4, tasks=[
        EvalTaskConfig(name="colours", kind="zeroshot", data=str(zeroshot_data), classnames=CLASSNAMES,
                       templates=["a {} square."]),
        EvalTaskConfig(name="squares", kind="retrieval", data=str(retrieval_data)),
    ])


def test_bad_samples_and_broken_shards_are_counted_and_metrics_cover_the_usable_ones(
        tmp_path: Path, tiny_clip, caplog: pytest.LogCaptureFixture) -> None:
    model, transform, tokenizer = tiny_clip
    usable_zeroshot, usable_retrieval = _write_bad_eval_shards(tmp_path / "bad")
    data = load_zeroshot(str(tmp_path / "bad"), CLASSNAMES)
    assert data.labels == [0, 1, 2, 1, 0, 1, 2]  # good0-2, bad-caption (good10 is green), good3-5
    assert data.skips.by_reason == {"image_unreadable": 1, "label_invalid": 1, "shard_truncated": 2}
    assert load_retrieval_shards(str(tmp_path / "bad")).skips.by_reason == {
        "image_unreadable": 1, "caption_empty": 1, "shard_truncated": 2}

    caplog.set_level(logging.WARNING, logger="mmpretrain.eval.harness")
    results = run_eval(model, transform, tokenizer, _tasks(tmp_path / "bad", tmp_path / "bad"), progress=False)
    assert results["zeroshot/colours/skipped"] == results["retrieval/squares/skipped"] == 4.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("\n" not in w and "(e.g. " in w for w in warnings)
    assert "zeroshot/colours: skipped 4 bad samples, evaluated 7: shard_truncated 2, " in warnings[0]
    assert "image_unreadable 1" in warnings[0] and "label_invalid 1" in warnings[0]
    assert "caption_empty 1" in warnings[1]

    # The same model on shards holding only the usable samples gives the same metrics, and no skips.
    _write_tar(tmp_path / "clean-zeroshot" / "shard-000000.tar", usable_zeroshot)
    _write_tar(tmp_path / "clean-retrieval" / "shard-000000.tar", usable_retrieval)
    clean = run_eval(model, transform, tokenizer, _tasks(tmp_path / "clean-zeroshot", tmp_path / "clean-retrieval"),
                     progress=False)
    assert set(clean) == set(results)
    assert {k: v for k, v in results.items() if not k.endswith("/skipped")} == pytest.approx(
        {k: v for k, v in clean.items() if not k.endswith("/skipped")})
    assert clean["zeroshot/colours/skipped"] == clean["retrieval/squares/skipped"] == 0.0

    table = format_table(results).splitlines()
    assert len({len(line) for line in table}) == 1  # still aligned
    assert any(line.startswith("zeroshot/colours/skipped") and line.endswith(" 4") for line in table)


def test_planted_and_oversized_members_are_never_read_into_memory(tmp_path: Path) -> None:
    """10 MB .pyd and .pickle members beside a good sample are passed over unread, and a 10 MB image over the
    member cap is a counted skip: traced allocations stay far below their size."""
    big = b"\x80\x04" + b"\0" * 10_000_000
    key, members = _good(0)
    _write_tar(tmp_path / "planted" / "shard-000000.tar", [
        (key, {**members, "pyd": big, "pickle": big}),
        ("huge", {**_good(1)[1], "png": big}),
        _good(2),
    ])
    del big
    for load in (lambda spec: load_zeroshot_shards(spec, CLASSNAMES, max_member_bytes=1_000_000),
                 lambda spec: load_retrieval_shards(spec, max_member_bytes=1_000_000)):
        tracemalloc.start()
        data = load(str(tmp_path / "planted"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 2_000_000
        assert len(data.images) == 2 and data.skips.by_reason == {"member_too_large": 1}
        assert "huge" in data.skips.last_detail["member_too_large"]
        assert ".png of 10,000,002 bytes" in data.skips.last_detail["member_too_large"]


def test_image_folders_skip_unreadable_images_and_missing_captions(tmp_path: Path, tiny_clip) -> None:
    for name, files in {"red": {"0.png": _png(COLOURS["red"]), "1.png": b"<html>404</html>"},
                        "blue": {"0.png": _png(COLOURS["blue"])}}.items():
        for file, data in files.items():
            (tmp_path / "cls" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "cls" / name / file).write_bytes(data)
    data = load_zeroshot(str(tmp_path / "cls"))
    assert data.labels == [0, 1] and data.skips.by_reason == {"image_unreadable": 1}
    assert str(tmp_path / "cls" / "red" / "1.png") in data.skips.last_detail["image_unreadable"]

    (tmp_path / "ret").mkdir()
    for i, name in enumerate(CLASSNAMES):
        (tmp_path / "ret" / f"{i}.png").write_bytes(_png(COLOURS[name]))
        (tmp_path / "ret" / f"{i}.txt").write_text(f"a {name} square\n")
    (tmp_path / "ret" / "1.txt").unlink()
    (tmp_path / "ret" / "2.png").write_bytes(b"")

    model, transform, tokenizer = tiny_clip
    config = EvalConfig(tasks=[
        EvalTaskConfig(name="folder", data=str(tmp_path / "cls"), template_set="generic"),
        EvalTaskConfig(name="folder", kind="retrieval", data=str(tmp_path / "ret")),
    ])
    results = run_eval(model, transform, tokenizer, config, progress=False)
    assert results["zeroshot/folder/skipped"] == 1.0 and results["retrieval/folder/skipped"] == 2.0
    assert results["retrieval/folder/image_to_text_R@1"] == 1.0  # one image, one caption left


@pytest.mark.parametrize("layout, reason", [("folder", "2: image_unreadable 2"),
                                            ("shards", "5: shard_unreadable 5")])
def test_a_task_with_no_usable_sample_fails_in_one_line_naming_it(tmp_path: Path, layout: str, reason: str) -> None:
    if layout == "folder":
        for i in range(2):
            (tmp_path / "data" / "red").mkdir(parents=True, exist_ok=True)
            (tmp_path / "data" / "red" / f"{i}.png").write_bytes(b"not a png")
    else:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "shard-000000.tar").write_bytes(b"\0garbage" * 100)
        (tmp_path / "data" / "sizes.json").write_text(json.dumps({"shard-000000.tar": 5}))
    task = EvalTaskConfig(name="broken", data=str(tmp_path / "data"), classnames=["red"], templates=["{}"])
    with pytest.raises(DataError) as error:
        run_eval(Adapter(nn.Identity()), lambda img: img, lambda t: t, EvalConfig(tasks=[task]), progress=False)
    message = str(error.value)
    assert "\n" not in message and message.startswith("eval task zeroshot/broken: no usable sample in ")
    assert f"(skipped {reason} (e.g. " in message
