"""Reading the audio member of a raw shard sample into a fixed-length mono clip, in the data worker (numpy).

Mirrors the image path (mmpretrain/data/decode.py): the untrusted bytes are only ever handed to libsndfile (via
soundfile: WAV, FLAC, Ogg Vorbis/Opus, MP3), the header is checked against the limits before anything is
decoded, and every way a member can be bad is a counted skip (SampleSkipped) rather than a crash. The clip then
travels to the training process as int16 PCM (`to_transport`), and the log-mel is computed on the training
device (mmpretrain/audio/features.py).
"""

from __future__ import annotations

import io
import random

import numpy as np
import soundfile
import soxr
import torch

from mmpretrain.audio.config import AudioConfig
from mmpretrain.data.skips import SampleSkipped

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg", "opus")

# int16 PCM <-> float in [-1, 1): the convention of libsndfile, torchaudio and librosa (divide by 2^15)
INT16_SCALE = 32768.0


def read_audio(data: bytes | None, limits: AudioConfig) -> tuple[np.ndarray, int]:
    """Decode audio bytes to a mono float32 wave and its sample rate, checking the duration from the header first.

    Any exception from libsndfile on these untrusted bytes means the audio is unreadable: a counted skip, whatever
    its type. Channels are averaged (not summed, so the mix stays within full scale).
    """
    if data is None:
        raise SampleSkipped("audio_missing", f"no {'/'.join(AUDIO_EXTENSIONS)} member")
    if not data:
        raise SampleSkipped("audio_unreadable", "zero bytes")
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception as e:
        raise SampleSkipped("audio_unreadable", f"{type(e).__name__}: {e}") from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise SampleSkipped("audio_unreadable", f"header: {info.samplerate} Hz, {info.channels} channels")
    if info.frames > limits.max_seconds * info.samplerate:
        raise SampleSkipped("audio_too_long", f"{info.frames / info.samplerate:.1f} s is over "
                                              f"model.audio.max_seconds = {limits.max_seconds:g} s")
    try:
        # soundfile reads at most the header's frame count, so the check above also bounds the memory used here
        wave = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)[0]
    except Exception as e:
        raise SampleSkipped("audio_unreadable", f"{type(e).__name__}: {e}") from None
    if len(wave) == 0:
        raise SampleSkipped("audio_unreadable", "no audio frames")
    wave = _mono(wave)
    if not np.isfinite(wave).all():  # float WAV can carry NaN/inf, which would poison the loss
        raise SampleSkipped("audio_unreadable", "non-finite samples")
    return wave, info.samplerate


def _mono(frames: np.ndarray) -> np.ndarray:
    """The mean of the channels of `[frames, channels]`, summed column by column: numpy's mean (or sum) over the
    short last axis takes ~5 ms for 10 s of 44.1 kHz stereo, about as long as decoding the FLAC, and a matrix-vector
    product goes through BLAS threads; this takes ~0.15 ms."""
    mono = frames[:, 0].copy()
    for channel in range(1, frames.shape[1]):
        mono += frames[:, channel]
    if frames.shape[1] > 1:
        mono *= np.float32(1 / frames.shape[1])
    return mono


def check_silence(wave: np.ndarray, limits: AudioConfig) -> None:
    """Raise SampleSkipped("audio_silent") when the wave's peak |amplitude| is below the threshold."""
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak < limits.silence_threshold:
        raise SampleSkipped("audio_silent", f"peak amplitude {peak:.2g} is under model.audio.silence_threshold "
                                            f"= {limits.silence_threshold:g}")


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono float32 wave with libsoxr at its "HQ" setting, which is what librosa.load uses by default.

    The output has len * target_sr / orig_sr samples (to within one), aligned with the input (no filter delay).
    """
    if orig_sr == target_sr:
        return wave
    return soxr.resample(wave, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def crop_or_pad(wave: np.ndarray, clip_samples: int, rng: random.Random | None) -> np.ndarray:
    """A clip of exactly `clip_samples`: a random window in training (`rng` given), the centre one otherwise.

    A short wave is zero-padded at its end (LAION-CLAP's "pad", not its "repeatpad"): silence after the sound keeps
    its start where the audio starts and does not show the model content twice that a caption counts once.
    """
    excess = len(wave) - clip_samples
    if excess < 0:
        return np.pad(wave, (0, -excess))
    start = rng.randint(0, excess) if rng is not None else excess // 2
    return wave[start:start + clip_samples]


def eval_crops(wave: np.ndarray, clip_samples: int, n: int) -> np.ndarray:
    """`n` deterministic clips `[n, clip_samples]` whose embeddings the evaluator averages (multi-crop).

    n = 1 is the centre crop (as `crop_or_pad` without an rng); n >= 2 spaces the windows evenly from the first
    sample to the last, so together they cover the whole of a clip up to n times `clip_samples` long. A wave no
    longer than one clip gives n identical zero-padded rows: the shape stays [n, clip_samples] for batching.
    """
    excess = len(wave) - clip_samples
    if excess <= 0 or n == 1:
        return np.stack([crop_or_pad(wave, clip_samples, None)] * n)
    starts = np.linspace(0, excess, n).round().astype(np.int64)
    return np.stack([wave[s:s + clip_samples] for s in starts])


def load_clip(data: bytes | None, config: AudioConfig, rng: random.Random | None) -> np.ndarray:
    """The whole worker-side path for training: read, skip silence, resample, crop (random with `rng`) or pad."""
    wave, sample_rate = read_audio(data, config)
    check_silence(wave, config)  # before resampling: a silent file costs only its decode
    return crop_or_pad(resample(wave, sample_rate, config.sample_rate), config.clip_samples, rng)


def to_transport(wave: np.ndarray) -> torch.Tensor:
    """A float wave as int16 PCM for the hand-over to the training process: 2 bytes per sample instead of float32's
    4, so half the shared memory and host-to-device copy (a 10 s, 16 kHz clip: 320 KB as int16, 640 KB as float32).

    Quantisation error after `from_transport`: at most half a step, 0.5 / 32768 = 1.5e-5, except within half a
    step of +1.0, where the top code 32767 is up to 1 / 32768 = 3.1e-5 away; values beyond full scale (float
    files can hold them) are clipped. That is the noise floor of 16-bit PCM (-96 dBFS), which most sources were
    anyway; float16, also 2 bytes, would err by up to 2.4e-4 near full scale (11 significant bits).
    """
    pcm = np.clip(np.rint(wave * INT16_SCALE), -32768, 32767).astype(np.int16)
    return torch.from_numpy(pcm)


def from_transport(pcm: torch.Tensor) -> torch.Tensor:
    """int16 PCM back to float32 in [-1, 1) (on whatever device the tensor is)."""
    return pcm.to(torch.float32) / INT16_SCALE
