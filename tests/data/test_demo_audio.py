"""Sound of the embedded demo data: DTMF digits and beeping shape scenes, measured back from the waves, and the
demo shards that carry it without changing a byte of their images and captions."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

import mmpretrain.data.demo_data as demo_data
from mmpretrain.data.demo_audio import (CLIP_SECONDS, COLOUR_PITCH_HZ, SAMPLE_RATE, SHAPE_TIMBRE, SIZE_BEEP_SECONDS,
                                        audio_rng, digit_flac, dtmf, encode_flac, scene_flac, scene_tones)
from mmpretrain.data.demo_data import COLOURS, SHAPES, SIZES, ShapeObject, sample_scene

N = round(CLIP_SECONDS * SAMPLE_RATE)
# The DTMF keypad (ITU-T Q.23), laid out independently of the module's table: rows low, columns high.
_ROWS, _COLUMNS = (697, 770, 852, 941), (1209, 1336, 1477)
KEYPAD = {d: (_ROWS[(d - 1) // 3], _COLUMNS[(d - 1) % 3]) for d in range(1, 10)} | {0: (_ROWS[3], _COLUMNS[1])}


def _spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    magnitude = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return np.fft.rfftfreq(x.size, 1.0 / SAMPLE_RATE), magnitude


def _two_peaks(x: np.ndarray) -> list[float]:
    """The strongest spectral peak, then the strongest one more than 5% away from it, low first."""
    freqs, magnitude = _spectrum(x)
    first = freqs[np.argmax(magnitude)]
    magnitude = np.where(np.abs(freqs - first) > 0.05 * first, magnitude, 0.0)
    return sorted([float(first), float(freqs[np.argmax(magnitude)])])


HOP, FRAME = SAMPLE_RATE // 100, SAMPLE_RATE // 50  # 10 ms, 20 ms


def _frame_rms(x: np.ndarray, hop: int = HOP, frame: int = FRAME) -> np.ndarray:
    starts = range(0, x.size - frame + 1, hop)
    return np.array([np.sqrt(np.mean(np.square(x[s:s + frame]))) for s in starts])


def _segments(x: np.ndarray, hop: int = HOP, frame: int = FRAME) -> list[tuple[int, int]]:
    """Sounding stretches (sample ranges) of a clip: 20 ms frames above the geometric mean of the noise floor
    and the loudest frame, after a 200 Hz high-pass (pink noise has most of its power below it). Dips of up to
    two hops are bridged (a noise burst's envelope fluctuates; the gaps between beeps are >= 60 ms), and runs
    shorter than 50 ms are noise."""
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(x.size, 1.0 / SAMPLE_RATE) < 200] = 0
    rms = _frame_rms(np.fft.irfft(spectrum, x.size), hop, frame)
    loud = rms > np.sqrt(np.percentile(rms, 5) * rms.max())
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(int), [0]])))
    runs: list[list[int]] = []
    for start, end in zip(edges[::2], edges[1::2]):
        if runs and start - runs[-1][1] <= 2:
            runs[-1][1] = end
        else:
            runs.append([start, end])
    return [(s * hop, (e - 1) * hop + frame) for s, e in runs if e - s >= 5]


def _timbre(beep: np.ndarray) -> tuple[str, float]:
    """(timbre, pitch Hz) of one beep. A tone has nearly all the power within half an octave of its peak in the
    peak itself, a noise burst spreads it (its pitch: the centre, in log frequency, of the power within an
    octave). Of the tones, a sawtooth has a strong 2nd harmonic, a square a 3rd but no 2nd, a sine neither."""
    freqs, magnitude = _spectrum(beep)
    power = np.square(magnitude)
    f0 = float(freqs[np.argmax(magnitude)])
    octaves = np.log2(np.maximum(freqs, 1.0) / f0)
    near = power[np.abs(freqs - f0) <= max(0.01 * f0, 25.0)].sum()  # the main lobe of a tone's peak
    if near / power[np.abs(octaves) <= 0.5].sum() < 0.93:  # tones >= 0.99, noise bursts <= 0.85
        band = np.abs(octaves) <= 1.0
        return "noise", float(f0 * 2 ** ((octaves[band] * power[band]).sum() / power[band].sum()))

    def harmonic_db(k: int) -> float:
        return 20 * np.log10(magnitude[np.abs(freqs - k * f0) <= 0.02 * k * f0].max() / magnitude.max())

    if harmonic_db(2) > -15:
        return "sawtooth", f0
    return ("square" if harmonic_db(3) > -15 else "sine"), f0


def _nearest_colour(freq: float) -> str:
    return min(COLOUR_PITCH_HZ, key=lambda c: abs(np.log(freq / COLOUR_PITCH_HZ[c])))


def test_maps_cover_the_demo_vocabulary_and_pitches_are_mel_separable() -> None:
    assert set(COLOUR_PITCH_HZ) == set(COLOURS) and set(SHAPE_TIMBRE) == set(SHAPES)
    assert set(SIZE_BEEP_SECONDS) == set(SIZES) and len(set(SHAPE_TIMBRE.values())) == len(SHAPES)
    mel = sorted(2595 * np.log10(1 + f / 700) for f in COLOUR_PITCH_HZ.values())
    band = 2595 * np.log10(1 + SAMPLE_RATE / 2 / 700) / 32  # width of one band of a 32-band mel filterbank
    assert min(np.diff(mel)) > 1.5 * band


@pytest.mark.parametrize("digit", range(10))
def test_dtmf_strongest_peaks_are_the_keypad_pair(digit: int) -> None:
    for seed in range(5):
        wave = dtmf(digit, audio_rng(seed, f"digit{digit:04d}"))
        assert wave.dtype == np.float32 and wave.shape == (N,) and np.abs(wave).max() <= 1.0
        low, high = _two_peaks(wave)
        assert abs(low / KEYPAD[digit][0] - 1) < 0.02 and abs(high / KEYPAD[digit][1] - 1) < 0.02, (seed, low, high)


def test_dtmf_rejects_non_digits() -> None:
    with pytest.raises(ValueError):
        dtmf(10, audio_rng(0, "x"))


def test_waves_are_deterministic_per_seed_and_key() -> None:
    objects = [ShapeObject("square", "red", "small", 10, 20), ShapeObject("circle", "blue", "large", 40, 30)]
    assert np.array_equal(dtmf(3, audio_rng(0, "digit0001")), dtmf(3, audio_rng(0, "digit0001")))
    assert digit_flac(3, 0, "digit0001") == digit_flac(3, 0, "digit0001")
    assert scene_flac(objects, 0, "train000001") == scene_flac(objects, 0, "train000001")
    assert digit_flac(3, 0, "digit0001") != digit_flac(3, 0, "digit0002")
    assert digit_flac(3, 0, "digit0001") != digit_flac(3, 1, "digit0001")
    assert scene_flac(objects, 0, "train000001") != scene_flac(objects, 1, "train000001")


def test_flac_round_trips_at_8_bits() -> None:
    wave = dtmf(5, audio_rng(0, "k"))
    decoded, rate = soundfile.read(io.BytesIO(encode_flac(wave)), dtype="float32")
    assert rate == SAMPLE_RATE and decoded.shape == wave.shape
    assert soundfile.info(io.BytesIO(encode_flac(wave))).subtype == "PCM_S8"
    assert np.abs(decoded - wave).max() <= 1 / 127  # within one 8-bit step


def test_dtmf_duration_and_loudness_vary() -> None:
    durations, peaks = [], []
    for i in range(40):
        wave = dtmf(i % 10, audio_rng(7, f"digit{i:04d}"))
        segments = _segments(wave)
        assert len(segments) == 1, segments
        durations.append((segments[0][1] - segments[0][0]) / SAMPLE_RATE)
        peaks.append(20 * np.log10(np.abs(wave).max()))
    assert 0.25 < min(durations) and max(durations) < 0.85 and max(durations) - min(durations) > 0.3
    assert np.std(durations) > 0.08
    assert -22 < min(peaks) and max(peaks) < 0 and max(peaks) - min(peaks) > 10


def test_scene_beeps_tell_count_colour_shape_and_size() -> None:
    rng = random.Random(3)
    for i in range(120):
        objects = sample_scene(rng, 1 + i % 3)
        wave = scene_tones(objects, audio_rng(0, f"scene{i}"))
        assert wave.dtype == np.float32 and wave.shape == (N,) and np.abs(wave).max() <= 1.0
        segments = _segments(wave)
        assert len(segments) == len(objects), (i, objects, segments)
        for obj, (start, end) in zip(sorted(objects, key=lambda o: (o.x, o.y)), segments):  # left to right
            timbre, pitch = _timbre(wave[start + HOP:end - HOP])  # the steady middle, without the fades
            assert (timbre, _nearest_colour(pitch)) == (SHAPE_TIMBRE[obj.shape], obj.colour), (i, obj)
            assert ((end - start) / SAMPLE_RATE > 0.17) == (obj.size == "large"), (i, obj, end - start)


# ---------------------------------------------------------------------------------------------- demo shards

# A smaller demo (every digit, fewer scenes) keeps the test fast; the shape streams are sequential, so a change
# in how any scene or caption is drawn shows in the first ones.
_SMALL = {"N_SHAPES_TRAIN": 60, "N_SHAPES_VAL": 40, "SINGLE_VAL_REPEATS": 1}
# Digests of the decoded image pixels, captions and metadata of each set of the small demo, seed 0, as written by
# demo_data.py at 7ae9e6a, before there was sound. Pixels rather than PNG bytes: the PNG encoding may change
# with the Pillow (zlib) version while what training sees does not; byte identity of the members is checked
# against the same generator with the sound left out, in the same environment (below).
PRE_AUDIO_DIGESTS = {
    "digits_train": "68a59095619340ff706b527c3641d057adea42dff653717de716ef547ba6e359",
    "digits_val": "8eefc3434415bc8e6d52d9af5965927ecaa332df85c089e67a7ffd3762316112",
    "shapes_train": "2bcd7943c61c7ea32b2a54bc1dd95f04faff0b14bb006f2bdd32f5144c0f0a0f",
    "shapes_val": "f4cca00a7d7eb05a734c75adce31fdbca20bc1114fb895b1f345306adab1ae55",
    "shapes_single_val": "72801b31901aa5b1dff4c30959ff4826edc6389c3ff9cb26294669619b91812b",
}


def _members(folder: Path) -> dict[str, bytes]:
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                file = tar.extractfile(info)
                assert file is not None
                out[info.name] = file.read()
    return out


def content_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name, data in _members(folder).items():  # in shard order
        ext = name.split(".", 1)[1]
        if ext == "flac":
            continue
        if ext == "png":
            pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            data = repr(pixels.shape).encode() + pixels.tobytes()
        digest.update(f"{name}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def _small_demo(monkeypatch: pytest.MonkeyPatch, root: Path, module: object = demo_data) -> dict[str, Path]:
    for name, value in _SMALL.items():
        monkeypatch.setattr(module, name, value)
    return module.generate_demo_data(root, seed=0)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _small_demo(monkeypatch, tmp_path_factory.mktemp("demo"))


def test_every_demo_sample_has_a_readable_flac(small_demo: dict[str, Path]) -> None:
    for name, folder in small_demo.items():
        members = _members(folder)
        keys = {m.split(".", 1)[0] for m in members}
        assert {f"{k}.flac" for k in keys} <= set(members), name
        for key in sorted(keys)[:40]:  # decoding all is slow; the keys cover every set and both kinds
            wave, rate = soundfile.read(io.BytesIO(members[f"{key}.flac"]), dtype="float32")
            assert rate == SAMPLE_RATE and wave.shape == (N,) and np.abs(wave).max() > 0.01, key


def test_digit_flac_sounds_its_label(small_demo: dict[str, Path]) -> None:
    import json

    members = _members(small_demo["digits_val"])
    for key in sorted({m.split(".", 1)[0] for m in members})[:30]:
        label = json.loads(members[f"{key}.json"])["label"]
        wave, _ = soundfile.read(io.BytesIO(members[f"{key}.flac"]), dtype="float32")
        low, high = _two_peaks(wave)
        assert abs(low / KEYPAD[label][0] - 1) < 0.02 and abs(high / KEYPAD[label][1] - 1) < 0.02, key


def test_images_captions_and_metadata_are_those_written_before_sound(small_demo: dict[str, Path]) -> None:
    assert {name: content_digest(folder) for name, folder in small_demo.items()} == PRE_AUDIO_DIGESTS


def test_sound_leaves_every_other_member_byte_identical(small_demo: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The same generator with no sound drawn at all: an empty .flac, and audio_rng never called.
    monkeypatch.setattr(demo_data, "digit_flac", lambda *args: b"")
    monkeypatch.setattr(demo_data, "scene_flac", lambda *args: b"")
    silent = _small_demo(monkeypatch, tmp_path)
    for name, folder in small_demo.items():
        with_sound = {m: d for m, d in _members(folder).items() if not m.endswith(".flac")}
        without = {m: d for m, d in _members(silent[name]).items() if not m.endswith(".flac")}
        assert with_sound == without, name
