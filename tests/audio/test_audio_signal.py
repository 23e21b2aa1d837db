"""The audio signal path: reading untrusted audio bytes into clips (skips for every bad case), the int16 hand-over,
log-mel features against librosa, and SpecAugment.

The log-mel reference is librosa 0.11 (`feature.melspectrogram` + `power_to_db`, and `filters.mel`), a
library nobody here wrote. All tolerances are absolute. The definition is checked in float64, where it must agree
to rounding: the filterbank against `filters.mel` and the dB conversion against `power_to_db`, to 1e-12. The
module itself runs in float32 and is checked against librosa's float64 result: within 1e-4 dB on every cell
within 50 dB of its example's peak, and 5e-4 dB on all cells. The gap is torch's float32 FFT (librosa multiplies
its float64 window into the frames, so its FFT runs in float64 even for float32 input): it grows in bands far
below the frame's loudest, e.g. 2.7e-4 dB measured ~70 dB under a quiet tone, in its window's sidelobes.
"""

from __future__ import annotations

import io
import random

import librosa
import numpy as np
import pytest
import soundfile
import torch

from mmpretrain.audio import (AudioConfig, LogMel, SpecAugment, SpecAugmentConfig, check_silence, crop_or_pad,
                              eval_crops, from_transport, load_clip, mel_filterbank, power_to_db, read_audio,
                              resample, to_transport)
from mmpretrain.data.skips import SKIP_REASONS, SampleSkipped
from mmpretrain.errors import ConfigError

SOURCE_RATE = 44_100


def _sine(freq: float, seconds: float, rate: int = SOURCE_RATE, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def _encode(wave: np.ndarray, fmt: str, rate: int = SOURCE_RATE, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def _skip_reason(data: bytes | None, config: AudioConfig) -> str:
    with pytest.raises(SampleSkipped) as caught:
        read_audio(data, config)
    return caught.value.reason


def test_the_audio_skip_reasons_are_registered():
    assert {"audio_missing", "audio_unreadable", "audio_too_long", "audio_silent"} <= set(SKIP_REASONS)


# ------------------------------------------------------------------------------------------------ config


def test_the_defaults_validate_and_describe_a_10s_16khz_clip():
    config = AudioConfig()
    config.validate()
    assert config.clip_samples == 160_000
    # every default mel band covers at least one FFT bin (librosa warns of empty filters otherwise)
    filters = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.f_min, config.mel_f_max)
    assert (filters.amax(dim=1) > 0).all()


@pytest.mark.parametrize("key, value", [("n_mels", 0), ("win_length", 1024), ("f_max", 9000.0), ("eval_crops", 0),
                                        ("mel_scale", "bark"), ("max_seconds", 5.0), ("top_db", -1.0)])
def test_a_bad_value_is_a_one_line_error_naming_its_key(key, value):
    with pytest.raises(ConfigError) as caught:
        AudioConfig(**{key: value}).validate()
    assert str(caught.value).startswith(f"model.audio.{key}: ") and "\n" not in str(caught.value)


def test_spec_augment_keys_are_named_in_full():
    with pytest.raises(ConfigError, match=r"^model\.audio\.spec_augment\.num_time_masks: "):
        AudioConfig(spec_augment=SpecAugmentConfig(num_time_masks=-1)).validate()


# ------------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_formats_decode_to_mono_and_keep_a_sine_through_resampling(fmt):
    left, right = _sine(1000.0, 1.0), _sine(1000.0, 1.0, amplitude=0.3)
    wave, rate = read_audio(_encode(np.stack([left, right], axis=1), fmt), AudioConfig())
    assert rate == SOURCE_RATE and wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - SOURCE_RATE) <= 2 * 1152  # lossy codecs may pad up to a frame or two
    if fmt in ("WAV", "FLAC"):  # lossless 16-bit: the mono mix is the channels' mean, to 16-bit precision
        np.testing.assert_allclose(wave, (left + right) / 2, atol=1 / 32768)
    resampled = resample(wave, rate, 16_000)
    assert resampled.dtype == np.float32
    assert abs(len(resampled) - len(wave) * 16_000 / SOURCE_RATE) <= 1
    assert abs(_peak_hz(resampled, 16_000) - 1000.0) <= 16_000 / len(resampled)  # within one FFT bin


def test_resampling_keeps_timing_and_level():
    wave = _sine(440.0, 1.0)
    resampled = resample(wave, SOURCE_RATE, 16_000)
    np.testing.assert_allclose(resampled[200:-200], _sine(440.0, 1.0, rate=16_000)[200:-200], atol=2e-3)
    assert resample(wave, SOURCE_RATE, SOURCE_RATE) is wave


def test_too_long_is_judged_from_the_header_without_decoding(monkeypatch):
    config = AudioConfig(clip_seconds=1.0, max_seconds=20.0)
    flac = _encode(np.zeros(30 * SOURCE_RATE, np.float32), "FLAC")
    truncated = flac[:4096]  # the STREAMINFO header still says 30 s; the body is gone

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file whose header is over the limit")

    monkeypatch.setattr(soundfile, "read", no_decoding)
    for data in (flac, truncated):
        with pytest.raises(SampleSkipped, match=r"30\.0 s is over model\.audio\.max_seconds = 20 s") as caught:
            read_audio(data, config)
        assert caught.value.reason == "audio_too_long"


def test_bad_bytes_are_unreadable_and_a_missing_member_is_missing():
    config = AudioConfig()
    random_bytes = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    wav = _encode(_sine(440.0, 0.5), "WAV")
    for data in (b"", b"not audio at all" * 100, random_bytes, wav[:44], b"RIFF\x00\x00\x00\x00WAVE"):
        assert _skip_reason(data, config) == "audio_unreadable", data[:20]
    assert _skip_reason(None, config) == "audio_missing"


def test_non_finite_float_samples_are_unreadable():
    wave = _sine(440.0, 0.5)
    wave[100] = np.nan
    assert _skip_reason(_encode(wave, "WAV", subtype="FLOAT"), AudioConfig()) == "audio_unreadable"


def test_silence_and_dither_are_skipped_but_a_quiet_sound_is_not():
    config = AudioConfig()  # threshold 1e-4, about -80 dBFS
    for wave in (np.zeros(16_000, np.float32), _sine(440.0, 1.0, amplitude=5e-5), np.zeros(0, np.float32)):
        with pytest.raises(SampleSkipped) as caught:
            check_silence(wave, config)
        assert caught.value.reason == "audio_silent"
    check_silence(_sine(440.0, 1.0, amplitude=1e-3), config)
    silent_file = _encode(np.zeros((SOURCE_RATE, 2), np.float32), "FLAC")
    with pytest.raises(SampleSkipped, match="^audio_silent: "):
        load_clip(silent_file, config, random.Random(0))


def test_crop_or_pad_lengths_and_placement():
    ramp = np.arange(1000, dtype=np.float32)
    centre = crop_or_pad(ramp, 400, None)
    np.testing.assert_array_equal(centre, ramp[300:700])
    padded = crop_or_pad(ramp[:250], 400, random.Random(0))
    np.testing.assert_array_equal(padded, np.concatenate([ramp[:250], np.zeros(150, np.float32)]))  # pad at end
    assert len(crop_or_pad(ramp, 1000, random.Random(0))) == 1000
    crops = [crop_or_pad(ramp, 400, random.Random(seed)) for seed in range(20)]
    for crop in crops:  # a contiguous window of the input
        np.testing.assert_array_equal(crop, ramp[int(crop[0]):int(crop[0]) + 400])
    assert len({int(crop[0]) for crop in crops}) > 10
    np.testing.assert_array_equal(crop_or_pad(ramp, 400, random.Random(7)), crop_or_pad(ramp, 400, random.Random(7)))


def test_eval_crops_span_the_clip_and_keep_their_shape():
    ramp = np.arange(1000, dtype=np.float32)
    np.testing.assert_array_equal(eval_crops(ramp, 400, 1), crop_or_pad(ramp, 400, None)[None])
    three = eval_crops(ramp, 400, 3)
    assert three.shape == (3, 400)
    assert three[:, 0].tolist() == [0, 300, 600] and three[-1, -1] == 999
    short = eval_crops(ramp[:100], 400, 3)
    assert short.shape == (3, 400) and (short == crop_or_pad(ramp[:100], 400, None)).all()


def test_load_clip_gives_a_training_clip_at_the_model_rate():
    config = AudioConfig(clip_seconds=1.0)
    stereo = np.stack([_sine(700.0, 3.0), _sine(700.0, 3.0)], axis=1)
    flac = _encode(stereo, "FLAC")
    clip = load_clip(flac, config, random.Random(3))
    assert clip.shape == (16_000,) and clip.dtype == np.float32
    np.testing.assert_array_equal(clip, load_clip(flac, config, random.Random(3)))
    assert abs(_peak_hz(clip, 16_000) - 700.0) <= 1.0


def test_int16_transport_halves_the_bytes_and_bounds_the_error():
    wave = np.random.default_rng(0).uniform(-1, 1, 100_000).astype(np.float32)
    pcm = to_transport(wave)
    assert pcm.dtype == torch.int16 and pcm.element_size() == torch.from_numpy(wave).element_size() // 2
    back = from_transport(pcm)
    assert back.dtype == torch.float32
    error = (back - torch.from_numpy(wave)).abs()
    below_top_code = torch.from_numpy(wave) < 32767.5 / 32768  # nearer to 32767 than to 32768 (clipped)
    assert error[below_top_code].max() <= 0.5 / 32768 and error.max() <= 1 / 32768
    edges = from_transport(to_transport(np.array([1.0, -1.0, 1.5, -1.5], np.float32)))
    assert edges.tolist() == [32767 / 32768, -1.0, 32767 / 32768, -1.0]  # full scale and beyond: clipped


# ------------------------------------------------------------------------------------------------ features


def _test_waves(rate: int = 16_000, seconds: float = 2.0) -> np.ndarray:
    """A chirp in noise with a near-silent stretch, white noise, and a quiet tone: [3, samples] float32."""
    rng = np.random.default_rng(0)
    t = np.arange(round(seconds * rate)) / rate
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.05 * rng.standard_normal(t.size)
    chirp[rate // 2:rate] *= 1e-3
    return np.stack([chirp, 0.2 * rng.standard_normal(t.size), 0.01 * np.sin(2 * np.pi * 3000 * t)]).astype(np.float32)


def _librosa_log_mel(wave: np.ndarray, config: AudioConfig) -> np.ndarray:
    power = librosa.feature.melspectrogram(
        y=wave, sr=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length,
        win_length=config.win_length, window="hann", center=True, pad_mode="reflect", power=2.0,
        n_mels=config.n_mels, fmin=config.f_min, fmax=config.mel_f_max, htk=config.mel_scale == "htk", norm="slaney")
    return librosa.power_to_db(power, ref=1.0, amin=config.amin, top_db=config.top_db)


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_the_filterbank_is_librosas(scale):
    for rate, n_fft, n_mels, f_min, f_max in [(16_000, 512, 64, 50.0, 8000.0), (48_000, 1024, 64, 50.0, 14_000.0),
                                             (22_050, 2048, 128, 0.0, 11_025.0), (16_000, 511, 40, 20.0, 7000.0)]:
        ours = mel_filterbank(rate, n_fft, n_mels, f_min, f_max, scale).numpy()
        theirs = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max,
                                     htk=scale == "htk", norm="slaney", dtype=np.float64)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale, top_db", [("slaney", 80.0), ("htk", None)])
def test_log_mel_matches_librosa(scale, top_db):
    config = AudioConfig(mel_scale=scale, top_db=top_db)
    waves = _test_waves()
    ours = LogMel(config)(torch.from_numpy(waves)).numpy()
    assert ours.shape == (3, config.n_mels, 1 + waves.shape[1] // config.hop_length) and ours.dtype == np.float32
    for wave, mine in zip(waves, ours):
        reference = _librosa_log_mel(wave.astype(np.float64), config)
        np.testing.assert_allclose(mine, reference, rtol=0, atol=5e-4)
        loud = reference >= reference.max() - 50
        np.testing.assert_allclose(mine[loud], reference[loud], rtol=0, atol=1e-4)


@pytest.mark.parametrize("top_db", [80.0, 30.0, None])
def test_the_db_conversion_is_librosas_power_to_db(top_db):
    power = np.random.default_rng(0).lognormal(-8, 4, size=(3, 64, 50))  # ~-35 dB +- 17 dB
    power[0, :10] = 0.0  # below amin
    ours = power_to_db(torch.from_numpy(power), amin=1e-10, top_db=top_db).numpy()
    for mine, theirs in zip(ours, power):  # per example
        np.testing.assert_allclose(mine, librosa.power_to_db(theirs, ref=1.0, amin=1e-10, top_db=top_db),
                                   rtol=0, atol=1e-12)


def test_log_mel_takes_int16_and_half_precision_input():
    config = AudioConfig()
    pcm = to_transport(_test_waves()[0])[None]
    module = LogMel(config)
    np.testing.assert_array_equal(module(pcm).numpy(), module(from_transport(pcm)).numpy())
    half = from_transport(pcm).to(torch.bfloat16)
    np.testing.assert_array_equal(module(half).numpy(), module(half.float()).numpy())


def test_log_mel_constants_survive_a_bf16_model_and_autocast():
    config = AudioConfig()
    waves = torch.from_numpy(_test_waves())
    module = LogMel(config)
    expected = module(waves)  # builds and caches the window and filterbank
    assert not list(module.parameters()) and not list(module.buffers()) and not module.state_dict()
    model = torch.nn.Sequential(module).to(torch.bfloat16)  # what DeepSpeed's bf16 engine does to a model
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = model(waves)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_top_db_floors_each_example_at_its_own_peak():
    config = AudioConfig(top_db=30.0)
    mel = LogMel(config)(torch.from_numpy(_test_waves()))
    peaks, floors = mel.amax(dim=(1, 2)), mel.amin(dim=(1, 2))
    assert (floors >= peaks - 30.0).all()
    assert torch.allclose(floors[[0, 2]], peaks[[0, 2]] - 30.0)  # the near-silent stretch, the tone's far bands
    assert peaks[0] - peaks[2] > 20  # the loud and the quiet example keep their own floors


# ------------------------------------------------------------------------------------------------ SpecAugment


def test_spec_augment_masks_whole_bands_and_frames_in_training():
    config = SpecAugmentConfig(freq_mask_param=10, time_mask_param=40, num_freq_masks=2, num_time_masks=2)
    augment = SpecAugment(config).train()
    mel = torch.randn(16, 64, 300)
    torch.manual_seed(0)
    out = augment(mel)
    assert out.shape == mel.shape and out.dtype == mel.dtype
    changed = out != mel
    fill = mel.mean(dim=(1, 2), keepdim=True).expand_as(mel)
    assert torch.equal(out[changed], fill[changed])  # masked cells hold the example's mean
    band_masked, frame_masked = changed.all(dim=2), changed.all(dim=1)  # [B, bands], [B, frames]
    assert torch.equal(changed, band_masked[:, :, None] | frame_masked[:, None, :])  # only whole stripes
    assert band_masked.any() and frame_masked.any()
    assert (band_masked.sum(dim=1) <= 2 * 9).all() and (frame_masked.sum(dim=1) <= 2 * 39).all()
    assert not torch.equal(changed[0], changed[1])  # each example draws its own masks
    torch.manual_seed(0)
    assert torch.equal(augment(mel), out)  # follows torch's seeding


def test_spec_augment_is_the_identity_in_eval_mode_or_when_off():
    mel = torch.randn(4, 64, 100)
    assert torch.equal(SpecAugment(SpecAugmentConfig()).eval()(mel), mel)
    off = SpecAugmentConfig(freq_mask_param=0, time_mask_param=0)
    assert torch.equal(SpecAugment(off).train()(mel), mel)
