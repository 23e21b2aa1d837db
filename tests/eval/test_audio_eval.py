"""Evaluation of audio and of any pair of modalities: zero-shot audio from shards and folders, retrieval between
audio, text and images (instance and class level), multi-crop averaging, audio skips, and config checks."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from PIL import Image

from mmpretrain.audio.config import AudioConfig
from mmpretrain.audio.decode import eval_crops, to_transport
from mmpretrain.errors import ConfigError, DataError
from mmpretrain.eval.datasets import load_retrieval, load_zeroshot
from mmpretrain.eval.harness import EvalConfig, EvalTaskConfig, check_task_data, run_eval
from mmpretrain.eval.modalities import AudioModality, EvalInputs, ImageModality, TextModality
from tests.conftest import write_colour_shards
from tests.eval.fakes import (AUDIO, CLASSES, HashModel, ToneModel, colour_tokens, crc_tokens, first_pixel, flac,
                              png, small_pixels, tone, unique_samples, write_samples)
from tests.eval.test_cross_modal_metrics import naive_recall

ZEROSHOT_KEYS = ("top1", "top5", "mean_per_class_recall", "skipped")


def _zeroshot(name: str, data: Path, modality: str = "audio", **kwargs) -> EvalTaskConfig:
    return EvalTaskConfig(name=name, kind="zeroshot", data=str(data), modality=modality, classnames=CLASSES,
                          templates=["the sound of {}.", "something {}."], **kwargs)


def test_audio_zeroshot_on_colour_tones(tmp_path: Path) -> None:
    write_colour_shards(tmp_path / "tones", audio=True)
    model = ToneModel()
    config = EvalConfig(batch_size=5, tasks=[_zeroshot("tones", tmp_path / "tones"),
                                             _zeroshot("squares", tmp_path / "tones", modality="image")])
    results = run_eval(model, first_pixel, colour_tokens, config, progress=False, audio=AUDIO)
    assert set(results) == {f"zeroshot/{n}/{k}" for n in ("tones", "squares") for k in ZEROSHOT_KEYS}
    assert results["zeroshot/tones/top1"] == results["zeroshot/tones/mean_per_class_recall"] == 1.0
    assert results["zeroshot/squares/top1"] == 1.0 and results["zeroshot/tones/skipped"] == 0.0
    # 24 clips of 0.25 s, as int16 [B, 4000], at most batch_size per forward
    assert sum(len(b) for b in model.audio_batches) == 24 and max(len(b) for b in model.audio_batches) == 5
    assert {tuple(b.shape[1:]) for b in model.audio_batches} == {(AUDIO.clip_samples,)}
    # a model that hears red as green scores 0
    shifted = run_eval(ToneModel(audio_shift=1), first_pixel, colour_tokens, EvalConfig(tasks=config.tasks[:1]),
                       progress=False, audio=AUDIO)
    assert shifted["zeroshot/tones/top1"] == 0.0


def test_audio_zeroshot_from_a_folder_of_class_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    for colour in ("blue", "red"):
        (root / colour).mkdir(parents=True)
        (root / colour / "a.flac").write_bytes(flac(tone(colour, 0.25)))
        (root / colour / "b.wav").write_bytes(_wav(tone(colour, 0.5, 22_050), 22_050))  # resampled to 16 kHz
        (root / colour / "cover.png").write_bytes(png((0, 0, 0)))  # not audio: not read
    audio = AudioModality(EvalInputs(audio=AUDIO))
    data = load_zeroshot(str(root), modality=audio)
    assert data.classnames == ["blue", "red"] and data.labels == [0, 0, 1, 1] and data.modality == "audio"
    assert all(item.dtype == torch.int16 and item.shape == (1, AUDIO.clip_samples) for item in data.items)
    task = EvalTaskConfig(name="folder", data=str(root), modality="audio", template_set="sounds")
    results = run_eval(ToneModel(), first_pixel, colour_tokens, EvalConfig(tasks=[task]), progress=False,
                       audio=AUDIO)
    assert results["zeroshot/folder/top1"] == 1.0 and results["zeroshot/folder/skipped"] == 0.0


def _wav(wave: np.ndarray, sample_rate: int) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, wave.astype(np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def test_audio_text_retrieval_from_a_folder_grouped_by_stem(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    (root / "sub").mkdir(parents=True)
    for i, colour in enumerate(CLASSES):
        (root / "sub" / f"{i}.flac").write_bytes(flac(tone(colour, 0.25)))
        (root / "sub" / f"{i}.txt").write_text(f"a {colour} tone\n\nsomething {colour}\n")
    (root / "only-text.txt").write_text("a caption with nothing to caption")  # not a sample
    (root / "no-caption.flac").write_bytes(flac(tone("red", 0.25)))            # a skip: caption_missing
    between = (AudioModality(EvalInputs(audio=AUDIO)), TextModality(EvalInputs()))
    data = load_retrieval(str(root), between=between)
    assert data.captions == [[f"a {c} tone", f"something {c}"] for c in CLASSES]
    assert len(data.items["audio"]) == 3 and data.skips.by_reason == {"caption_missing": 1}
    task = EvalTaskConfig(name="folder", kind="retrieval", data=str(root), between=["audio", "text"])
    results = run_eval(ToneModel(), first_pixel, colour_tokens, EvalConfig(tasks=[task]), progress=False, audio=AUDIO)
    assert results["retrieval/folder/audio_to_text_R@1"] == results["retrieval/folder/text_to_audio_R@1"] == 1.0
    assert results["retrieval/folder/skipped"] == 1.0


def _read_tars(folder: Path) -> list[dict[str, bytes]]:
    """The samples of a shard set in order, read with tarfile: the naive reference's own reader."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples[key][ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return [samples[key] for key in sorted(samples)]


def test_retrieval_between_any_two_modalities_equals_a_naive_reference(tmp_path: Path) -> None:
    write_samples(tmp_path / "set", unique_samples(14))
    model = HashModel(AUDIO.clip_samples)
    config = EvalConfig(batch_size=4, tasks=[
        EvalTaskConfig(name="clips", kind="retrieval", data=str(tmp_path / "set"), between=["audio", "text"]),
        EvalTaskConfig(name="both", kind="retrieval", data=str(tmp_path / "set"), between=["image", "audio"]),
        EvalTaskConfig(name="squares", kind="retrieval", data=str(tmp_path / "set")),
    ])
    results = run_eval(model, small_pixels, crc_tokens, config, progress=False, audio=AUDIO)
    directions = {"clips": ("audio_to_text", "text_to_audio"), "both": ("image_to_audio", "audio_to_image"),
                  "squares": ("image_to_text", "text_to_image")}  # image-text keys as before audio
    assert set(results) == {f"retrieval/{name}/{d}_R@{k}" for name, ds in directions.items() for d in ds
                            for k in (1, 5, 10)} | {f"retrieval/{name}/skipped" for name in directions}

    # The reference: tarfile, soundfile (int16, the whole 0.25 s tone is the clip), PIL, one item at a time.
    raw = _read_tars(tmp_path / "set")
    audio = torch.stack([model.encode("audio", torch.from_numpy(soundfile.read(
        io.BytesIO(s["flac"]), dtype="int16")[0])[None])[0] for s in raw])
    images = torch.stack([model.encode("image", small_pixels(Image.open(
        io.BytesIO(s["png"])).convert("RGB"))[None])[0] for s in raw])
    captions = [(i, line) for i, s in enumerate(raw) for line in s["txt"].decode().splitlines()]
    texts = torch.stack([model.encode("text", crc_tokens([line]))[0] for _, line in captions])
    owners, ids = [i for i, _ in captions], list(range(len(raw)))
    expected = {}
    for k in (1, 5, 10):
        expected[f"clips/audio_to_text_R@{k}"] = naive_recall(audio, texts, ids, owners, k)
        expected[f"clips/text_to_audio_R@{k}"] = naive_recall(texts, audio, owners, ids, k)
        expected[f"both/image_to_audio_R@{k}"] = naive_recall(images, audio, ids, ids, k)
        expected[f"both/audio_to_image_R@{k}"] = naive_recall(audio, images, ids, ids, k)
        expected[f"squares/image_to_text_R@{k}"] = naive_recall(images, texts, ids, owners, k)
        expected[f"squares/text_to_image_R@{k}"] = naive_recall(texts, images, owners, ids, k)
    assert {key: results[f"retrieval/{key}"] for key in expected} == pytest.approx(expected)
    assert 0 < expected["clips/audio_to_text_R@1"] < 1  # the reference is not trivially all hits or none


def test_class_level_retrieval_matches_by_label_and_takes_either_member(tmp_path: Path) -> None:
    # Every 4th sample lacks its image, every 5th its audio: sample 19 lacks both (a skip, image_missing).
    write_samples(tmp_path / "set", unique_samples(20, missing={"png": 4, "flac": 5}))
    image, audio = ImageModality(EvalInputs()), AudioModality(EvalInputs(audio=AUDIO))
    data = load_retrieval(str(tmp_path / "set"), between=(image, audio), match_key="label")
    assert len(data.items["image"]) == 15 and len(data.items["audio"]) == 16 and len(data.labels) == 19
    assert data.skips.by_reason == {"image_missing": 1}
    assert [data.labels[s] for s in data.samples["audio"][:3]] == ["red", "green", "blue"]

    task = EvalTaskConfig(name="digits", kind="retrieval", data=str(tmp_path / "set"), between=["image", "audio"],
                          match_key="label")
    results = run_eval(ToneModel(), first_pixel, colour_tokens, EvalConfig(tasks=[task]), progress=False, audio=AUDIO)
    assert set(results) == {f"retrieval/digits/{d}_class_R@{k}" for d in ("image_to_audio", "audio_to_image")
                            for k in (1, 5, 10)} | {"retrieval/digits/skipped"}
    assert results["retrieval/digits/image_to_audio_class_R@1"] == 1.0
    assert results["retrieval/digits/audio_to_image_class_R@1"] == 1.0 and results["retrieval/digits/skipped"] == 1
    shifted = run_eval(ToneModel(audio_shift=2), first_pixel, colour_tokens, EvalConfig(tasks=[task]),
                       progress=False, audio=AUDIO)
    assert shifted["retrieval/digits/image_to_audio_class_R@1"] == 0.0
    # Instance-level on the same set: a sample needs both members; the others are counted skips.
    instance = EvalTaskConfig(name="pairs", kind="retrieval", data=str(tmp_path / "set"), between=["image", "audio"])
    results = run_eval(ToneModel(), first_pixel, colour_tokens, EvalConfig(tasks=[instance]), progress=False,
                       audio=AUDIO)
    assert results["retrieval/pairs/skipped"] == 5 + 4 - 1  # 5 without an image, 4 more without audio


def test_multi_crop_embeddings_are_averaged_then_renormalised(tmp_path: Path) -> None:
    config = AudioConfig(clip_seconds=0.25, max_seconds=5.0, eval_crops=3)
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 16_000)  # 1 s: crops start at 0, 6000 and 12000
    pcm = soundfile.read(io.BytesIO(flac(wave)), dtype="int16")[0]
    modality = AudioModality(EvalInputs(audio=config))
    item = modality.decode({"flac": flac(wave)})
    assert item.dtype == torch.int16 and item.shape == (3, 4000)
    assert torch.equal(item, torch.from_numpy(np.stack([pcm[0:4000], pcm[6000:10000], pcm[12000:16000]])))
    assert torch.equal(item, to_transport(eval_crops(pcm / 32768.0, 4000, 3)))

    model = HashModel(4000)
    other = modality.decode({"flac": flac(wave[::-1].copy())})
    expected = torch.stack([F.normalize(F.normalize(model.encode("audio", x, normalize=False), dim=-1).mean(0),
                                        dim=0) for x in (item, other)])
    for batch_size in (1, 3, 5, 6, 64):  # 1 clip (3 crops) per forward at most 5, both at 6 or more
        assert torch.allclose(modality.encode(model, [item, other], batch_size, "cpu"), expected, atol=1e-6)
    single = AudioModality(EvalInputs(audio=AudioConfig(clip_seconds=0.25, max_seconds=5.0)))
    assert torch.equal(single.decode({"flac": flac(wave)}), torch.from_numpy(pcm[6000:10000])[None])  # centre


def _bad_audio_shards(folder: Path) -> None:
    samples = unique_samples(6)
    samples += [
        {"flac": flac(np.zeros(4000)), "txt": "a silent one", "json": {"label": "red"}},
        {"flac": b"fLaC but not really", "txt": "an unreadable one", "json": {"label": "green"}},
        {"png": png((30, 30, 220)), "txt": "one without audio", "json": {"label": "blue"}},
        {"flac": flac(tone("red", 6.0)), "txt": "a long one", "json": {"label": "red"}},
    ]
    write_samples(folder, samples, shards=1)


def test_bad_audio_is_a_counted_skip_with_its_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _bad_audio_shards(tmp_path / "bad")
    reasons = {"audio_silent": 1, "audio_unreadable": 1, "audio_missing": 1, "audio_too_long": 1}
    audio = AudioModality(EvalInputs(audio=AUDIO))
    assert load_zeroshot(str(tmp_path / "bad"), CLASSES, modality=audio).skips.by_reason == reasons
    assert load_retrieval(str(tmp_path / "bad"), between=(audio, TextModality(EvalInputs()))).skips.by_reason \
        == reasons
    caplog.set_level(logging.WARNING, logger="mmpretrain.eval.harness")
    config = EvalConfig(tasks=[
        _zeroshot("tones", tmp_path / "bad"),
        EvalTaskConfig(name="clips", kind="retrieval", data=str(tmp_path / "bad"), between=["text", "audio"]),
    ])
    results = run_eval(ToneModel(), first_pixel, colour_tokens, config, progress=False, audio=AUDIO)
    assert results["zeroshot/tones/skipped"] == results["retrieval/clips/skipped"] == 4.0
    assert results["zeroshot/tones/top1"] == 1.0
    assert "text_to_audio_R@1" in "".join(results) and "audio_to_text_R@1" in "".join(results)
    warning = caplog.records[0].getMessage()
    assert "skipped 4 bad samples, evaluated 6" in warning and "audio_too_long 1" in warning
    write_samples(tmp_path / "none", [{"png": png((0, 0, 0)), "json": {"label": "red"}}] * 2, shards=1)
    with pytest.raises(DataError, match=r"zeroshot/none: no usable sample .*audio_missing 2"):
        run_eval(ToneModel(), first_pixel, colour_tokens, EvalConfig(tasks=[_zeroshot("none", tmp_path / "none")]),
                 progress=False, audio=AUDIO)


@pytest.mark.parametrize("task, message", [
    (EvalTaskConfig(name="t", data="x", modality="video", classnames=["a"], templates=["{}"]),
     r"task 0 \('t'\): modality must be one of image, audio .*'video'"),
    (EvalTaskConfig(name="t", data="x", modality="text", classnames=["a"], templates=["{}"]),
     r"task 0 \('t'\): modality must be one of image, audio"),
    (EvalTaskConfig(name="t", kind="retrieval", data="x", between=["audio", "audio"]),
     r"task 0 \('t'\): between must name two different modalities of image, text, audio, got \['audio', 'audio'\]"),
    (EvalTaskConfig(name="t", kind="retrieval", data="x", between=["image"]), r"between must name two"),
    (EvalTaskConfig(name="t", kind="retrieval", data="x", between=["image", "video"]), r"between must name two"),
    (EvalTaskConfig(name="t", kind="retrieval", data="x", modality="audio"), r"modality is for zero-shot tasks"),
    (EvalTaskConfig(name="t", kind="retrieval", data="x", match_key=" "), r"match_key is empty"),
    (EvalTaskConfig(name="t", data="x", classnames=["a"], templates=["{}"], match_key="label"),
     r"match_key is for retrieval tasks"),
    (EvalTaskConfig(name="t", data="x", classnames=["a"], templates=["{}"], between=["audio", "text"]),
     r"between is for retrieval tasks"),
])
def test_invalid_modality_settings_fail_in_one_line_naming_the_task_and_key(task: EvalTaskConfig,
                                                                           message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        run_eval(ToneModel(), first_pixel, colour_tokens, EvalConfig(tasks=[task]), progress=False, audio=AUDIO)
    assert "\n" not in str(err.value)


def test_a_task_needing_a_tower_the_model_lacks_is_refused_before_reading(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")  # never read: the refusal comes first
    config = EvalConfig(tasks=[
        EvalTaskConfig(name="ok", kind="retrieval", data=missing),
        EvalTaskConfig(name="clips", kind="retrieval", data=missing, between=["image", "audio"]),
    ])
    image_text = ToneModel(modalities=("image", "text"))
    with pytest.raises(ConfigError, match=r"eval task 1 \('clips'\): retrieval between image and audio needs the "
                                          r"audio tower, which the model lacks \(model.towers = \['image', 'text'\]\)"):
        run_eval(image_text, first_pixel, colour_tokens, config, progress=False, audio=AUDIO)
    with pytest.raises(ConfigError, match=r"eval task 0 \('t'\): zero-shot audio needs the audio tower"):
        check_task_data(EvalConfig(tasks=[_zeroshot("t", tmp_path)]), ["image", "text"])  # at training start
    with pytest.raises(ConfigError, match=r"zero-shot image needs the text tower"):
        run_eval(ToneModel(modalities=("image", "audio")), first_pixel, colour_tokens,
                 EvalConfig(tasks=[_zeroshot("t", tmp_path, modality="image")]), progress=False, audio=AUDIO)
    with pytest.raises(ConfigError, match=r"eval task 1 \('clips'\): evaluating audio needs the audio settings "
                                          r"\(model.audio\)"):
        run_eval(ToneModel(), first_pixel, colour_tokens, config, progress=False)  # no audio= given


@pytest.fixture(scope="module")
def micro_three_towers():
    from mmpretrain.config import load_config
    from mmpretrain.models import build_model
    from tests.conftest import audio_overrides

    torch.manual_seed(0)
    config = load_config(None, ["model.name=mmp-test-micro", "model.towers=[image,text,audio]", *audio_overrides()])
    return config.model, build_model(config.model)


def test_the_micro_three_tower_model_scores_audio_as_a_naive_loop_does(tmp_path: Path, micro_three_towers) -> None:
    model_config, built = micro_three_towers
    write_colour_shards(tmp_path / "tones", n_shards=1, audio=True)
    task = _zeroshot("tones", tmp_path / "tones")
    inputs = EvalInputs.from_model(built, model_config)
    assert inputs.audio is model_config.audio
    results = run_eval(built.model, inputs.image_transform, inputs.tokenizer, EvalConfig(batch_size=5, tasks=[task]),
                       progress=False, audio=inputs.audio)
    model = built.model.eval()
    with torch.no_grad():
        classes = []
        for name in CLASSES:  # prompt ensembling, one text at a time
            prompts = [F.normalize(model.encode("text", built.tokenizer([t.format(name)]))[0], dim=0)
                       for t in task.templates]
            classes.append(F.normalize(torch.stack(prompts).mean(0), dim=0))
        hits = []
        for sample in _read_tars(tmp_path / "tones"):
            pcm = torch.from_numpy(soundfile.read(io.BytesIO(sample["flac"]), dtype="int16")[0])
            scores = torch.stack(classes) @ model.encode("audio", pcm[None])[0]
            hits.append(CLASSES[int(scores.argmax())] == json.loads(sample["json"])["label"])
    assert results["zeroshot/tones/top1"] == pytest.approx(sum(hits) / len(hits))


def test_evaluate_model_passes_the_audio_settings(tmp_path: Path) -> None:
    from mmpretrain.config import load_config
    from mmpretrain.eval.evaluate import evaluate_model
    from tests.conftest import audio_overrides

    write_colour_shards(tmp_path / "tones", n_shards=1, per_shard=6, audio=True)
    config = load_config(None, ["model.name=mmp-test-micro", "model.towers=[image,text,audio]", *audio_overrides()])
    tasks = EvalConfig(batch_size=8, tasks=[
        _zeroshot("tones", tmp_path / "tones"),
        EvalTaskConfig(name="tones", kind="retrieval", data=str(tmp_path / "tones"), between=["audio", "image"]),
    ])
    results = evaluate_model(config.model, tasks, tmp_path / "out.json", device="cpu", progress=False,
                             random_init=True)
    assert {"zeroshot/tones/top1", "retrieval/tones/audio_to_image_R@1", "retrieval/tones/image_to_audio_R@10"} \
        <= set(results)
    assert json.loads((tmp_path / "out.json").read_text()) == results
