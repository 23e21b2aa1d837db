"""Sound for the embedded demo data, synthesised on the fly: no download, no recordings.

- digits: the DTMF telephone tones of the digit (two sine frequencies per key), with random duration, loudness,
  twist (level difference between the two tones), slight detuning and pink background noise.
- shapes scenes: one beep per object, left to right by the object's position; the pitch says the colour, the
  timbre the shape and the beep length the size, so the number of beeps is the number of objects.

Every clip is ``CLIP_SECONDS`` long at ``SAMPLE_RATE`` Hz, mono, so its length never gives the content away (a
three-object scene is no longer than a single shape). Each clip comes from its own random generator, seeded from
the demo seed and the sample key (`audio_rng`), never from the streams that draw the images and captions: adding
sound leaves every image and caption byte as it was, and the same (seed, key) always gives the same wave.

The wave functions return float32 arrays in [-1, 1]; `encode_flac` stores them as 8-bit FLAC (the ``.flac``
member of each demo sample). 8 bits keep the demo's sound at ~6.5 KB a clip (16 bits: ~22 KB, and the demo data
would grow by ~190 MB instead of ~57 MB): 8-bit quantisation noise (about -48 dBFS) stays under the background
noise the clips carry anyway. (8 kHz would halve it again, but the square and sawtooth of the highest colours would
lose the harmonics that tell them apart.)
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # demo_data imports this module; the type is only needed for annotations
    from mmpretrain.data.demo_data import ShapeObject

SAMPLE_RATE = 16_000
CLIP_SECONDS = 1.0

# DTMF keypad frequencies, ITU-T Recommendation Q.23 (Table 1): a key sends one tone of the low group (its row)
# and one of the high group (its column); 1633 Hz (column A-D) is not used by digits.
DTMF_LOW_HZ = (697.0, 770.0, 852.0, 941.0)
DTMF_HIGH_HZ = (1209.0, 1336.0, 1477.0)
DTMF_KEYPAD: dict[int, tuple[float, float]] = {
    1: (697.0, 1209.0), 2: (697.0, 1336.0), 3: (697.0, 1477.0),
    4: (770.0, 1209.0), 5: (770.0, 1336.0), 6: (770.0, 1477.0),
    7: (852.0, 1209.0), 8: (852.0, 1336.0), 9: (852.0, 1477.0),
    0: (941.0, 1336.0),
}

# Colour -> pitch: notes a fifth apart (ratio ~1.5), in the order of the rainbow, red lowest. The closest pair is
# 143 mel apart (C4 -> G4), more than 1.6 bands of a 32-band mel filterbank over 0-8 kHz (86 mel per band).
COLOUR_PITCH_HZ: dict[str, float] = {
    "red": 261.63,     # C4
    "orange": 392.00,  # G4
    "yellow": 587.33,  # D5
    "green": 880.00,   # A5
    "blue": 1318.51,   # E6
    "purple": 1975.53,  # B6
}
# Shape -> timbre: round is pure, the square is square, the pointed triangle is a sawtooth, and the diamond a
# burst of noise band-passed around the pitch (pitched, but with no harmonics).
SHAPE_TIMBRE: dict[str, str] = {"circle": "sine", "square": "square", "triangle": "sawtooth", "diamond": "noise"}
# Size -> beep length in seconds (low, high): a large shape's beep is clearly longer than a small one's.
SIZE_BEEP_SECONDS: dict[str, tuple[float, float]] = {"small": (0.10, 0.13), "large": (0.20, 0.25)}

DIGIT_TONE_SECONDS = (0.3, 0.8)  # random tone length in the 1 s clip
LEVEL_DBFS = (-20.0, -3.0)  # peak level of the tones, before noise
SNR_DB = (12.0, 30.0)  # tones (RMS while sounding) over the background noise
DETUNE = 0.015  # each tone off its nominal frequency by up to +-1.5%
_BEEP_GAP_SECONDS = (0.06, 0.10)
_BEEP_JITTER_DB = 2.0  # per-beep loudness variation within a scene
_MAX_HARMONIC_HZ = 7000.0  # square and sawtooth are summed from harmonics below this (no aliasing at 16 kHz)
_MAX_HARMONICS = 12
_NOISE_BANDWIDTH = 0.25  # a noise burst's band: a Gaussian in log frequency, standard deviation in octaves


def audio_rng(seed: int, key: str) -> np.random.Generator:
    """The generator for one sample's sound: seeded from a hash of (demo seed, sample key) alone."""
    digest = hashlib.sha256(f"audio-{seed}-{key}".encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


def dtmf(digit: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The DTMF tone pair of `digit` (0-9) at a random offset in a ``CLIP_SECONDS`` clip.

    Random per call: tone length in ``DIGIT_TONE_SECONDS``, peak level in ``LEVEL_DBFS``, each frequency detuned
    by up to ``DETUNE``, twist (high tone's level over the low one's) in [-2, +4] dB, pink noise at an SNR in
    ``SNR_DB``; 5 ms raised-cosine fades so the tone starts and stops without a click.
    """
    if digit not in DTMF_KEYPAD:
        raise ValueError(f"DTMF digits are 0-9, got {digit!r}")
    n = round(CLIP_SECONDS * sample_rate)
    length = min(round(rng.uniform(*DIGIT_TONE_SECONDS) * sample_rate), n)
    start = int(rng.integers(0, n - length + 1))
    low, high = (f * (1.0 + rng.uniform(-DETUNE, DETUNE)) for f in DTMF_KEYPAD[digit])
    twist = 10.0 ** (rng.uniform(-2.0, 4.0) / 20.0)
    phases = rng.uniform(0.0, 2.0 * np.pi, 2)
    tone = (np.sin(_phase(low, length, sample_rate, phases[0]))
            + np.float32(twist) * np.sin(_phase(high, length, sample_rate, phases[1])))
    tone *= _fades(length, round(0.005 * sample_rate))
    tone *= np.float32(_db(rng.uniform(*LEVEL_DBFS)) / (1.0 + twist))  # peak of the sum is at most 1 + twist
    wave = np.zeros(n, dtype=np.float32)
    wave[start:start + length] = tone
    return _finish(wave, _rms(tone), rng, sample_rate)


def scene_tones(objects: Sequence[ShapeObject], rng: np.random.Generator,
                sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One beep per object of a shapes scene, left to right, in a ``CLIP_SECONDS`` clip.

    Pitch from the colour (``COLOUR_PITCH_HZ``, detuned by up to ``DETUNE``), timbre from the shape
    (``SHAPE_TIMBRE``), length from the size (``SIZE_BEEP_SECONDS``). Random per call: beep lengths within their
    size's range, gaps of 60-100 ms, where the sequence starts, +-2 dB per beep around equal RMS, the scene's peak
    level in ``LEVEL_DBFS``, and pink noise at an SNR in ``SNR_DB``.
    """
    n = round(CLIP_SECONDS * sample_rate)
    ordered = sorted(objects, key=lambda o: (o.x, o.y))
    lengths = [round(rng.uniform(*SIZE_BEEP_SECONDS[o.size]) * sample_rate) for o in ordered]
    gaps = [round(rng.uniform(*_BEEP_GAP_SECONDS) * sample_rate) for _ in ordered[1:]]
    span = sum(lengths) + sum(gaps)
    if span > n:
        raise ValueError(f"{len(ordered)} beeps take {span / sample_rate:.2f} s, longer than the "
                         f"{CLIP_SECONDS} s clip")
    position = int(rng.integers(0, n - span + 1))
    level = _db(rng.uniform(*LEVEL_DBFS))
    wave = np.zeros(n, dtype=np.float32)
    active = np.zeros(n, dtype=bool)
    for i, (obj, length) in enumerate(zip(ordered, lengths)):
        pitch = COLOUR_PITCH_HZ[obj.colour] * (1.0 + rng.uniform(-DETUNE, DETUNE))
        beep = _beep(SHAPE_TIMBRE[obj.shape], pitch, length, rng, sample_rate)
        beep *= _fades(length, round(0.008 * sample_rate))
        # Equal RMS, so a noise burst (a high peak for its power) is as loud as a tone, then +-2 dB.
        wave[position:position + length] = beep * np.float32(_db(rng.uniform(-_BEEP_JITTER_DB, _BEEP_JITTER_DB))
                                                             / max(_rms(beep), 1e-12))
        active[position:position + length] = True
        position += length + (gaps[i] if i < len(gaps) else 0)
    wave *= np.float32(level / max(float(np.abs(wave).max()), 1e-12))  # the loudest peak at the scene's level
    return _finish(wave, _rms(wave[active]), rng, sample_rate)


def encode_flac(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A mono float wave in [-1, 1] as 8-bit FLAC bytes (libsndfile quantises the floats)."""
    import soundfile  # only the demo's audio needs it

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(wave, -1.0, 1.0).astype(np.float32), sample_rate, format="FLAC",
                    subtype="PCM_S8")
    return buffer.getvalue()


def digit_flac(digit: int, seed: int, key: str) -> bytes:
    """The ``.flac`` member of digit sample `key`: `dtmf` drawn from `audio_rng(seed, key)`."""
    return encode_flac(dtmf(digit, audio_rng(seed, key)))


def scene_flac(objects: Sequence[ShapeObject], seed: int, key: str) -> bytes:
    """The ``.flac`` member of scene sample `key`: `scene_tones` drawn from `audio_rng(seed, key)`."""
    return encode_flac(scene_tones(objects, audio_rng(seed, key)))


# ---------------------------------------------------------------------------------------------- helpers


def _db(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _phase(freq: float, length: int, sample_rate: int, offset: float = 0.0) -> np.ndarray:
    """The phase of a `freq` Hz oscillator over `length` samples, wrapped to [0, 2 pi) in float64 before it
    becomes float32 (numpy's float32 sine is much faster, and wrapping keeps it exact to ~1e-6 rad)."""
    cycles = np.arange(length) * (freq / sample_rate) + offset / (2.0 * np.pi)
    cycles -= np.floor(cycles)
    return cycles.astype(np.float32) * np.float32(2.0 * np.pi)


def _fades(length: int, fade: int) -> np.ndarray:
    """An envelope of ones with raised-cosine ramps of `fade` samples at both ends."""
    envelope = np.ones(length, dtype=np.float32)
    fade = min(fade, length // 2)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
        envelope[:fade] = ramp
        envelope[length - fade:] = ramp[::-1]
    return envelope


def _beep(timbre: str, pitch: float, length: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """`length` samples of one timbre at `pitch` Hz (unnormalised)."""
    if timbre == "noise":
        # White noise shaped in the frequency domain by a Gaussian band (in octaves) around the pitch: wide enough
        # to sound as noise rather than a wavering tone even at the lowest pitch, in 0.1 s.
        freqs = np.fft.rfftfreq(length, 1.0 / sample_rate)
        octaves = np.log2(np.maximum(freqs, 1.0) / pitch)
        band = np.exp(-0.5 * np.square(octaves / _NOISE_BANDWIDTH))
        spectrum = (rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size)) * band
        return np.fft.irfft(spectrum, length).astype(np.float32)
    if timbre == "sine":
        harmonics = np.array([1.0], dtype=np.float32)
    elif timbre in ("square", "sawtooth"):
        # Band-limited Fourier series: odd harmonics at 1/k for a square wave, all harmonics at 1/k for a sawtooth.
        harmonics = np.arange(1, _MAX_HARMONICS + 1, 2 if timbre == "square" else 1, dtype=np.float32)
        harmonics = harmonics[harmonics * pitch < min(_MAX_HARMONIC_HZ, sample_rate / 2)]
    else:
        raise ValueError(f"unknown timbre {timbre!r}")
    phase = _phase(pitch, length, sample_rate, rng.uniform(0.0, 2.0 * np.pi))
    return (np.sin(np.outer(harmonics, phase)) / harmonics[:, None]).sum(axis=0)


def _pink_noise(n: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """`n` samples of unit-RMS pink (1/f power) noise, flat below 50 Hz so it has no rumble: 1/f amplitudes with
    uniformly random phases (Gaussian in time, as a sum of many independent components)."""
    shape = _pink_shape(n, sample_rate)
    angle = rng.random(shape.size, dtype=np.float32) * np.float32(2.0 * np.pi)
    noise = np.fft.irfft(shape * (np.cos(angle) + 1j * np.sin(angle)), n).astype(np.float32)
    return noise / np.float32(max(_rms(noise), 1e-12))


@functools.lru_cache(maxsize=8)
def _pink_shape(n: int, sample_rate: int) -> np.ndarray:
    """Amplitude per rfft bin of 1/f power noise: 1/sqrt(f) above 50 Hz, flat below, no DC."""
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    shape = (1.0 / np.sqrt(np.maximum(freqs, 50.0))).astype(np.float32)
    shape[0] = 0.0
    shape.flags.writeable = False
    return shape


def _finish(wave: np.ndarray, signal_rms: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Add pink noise at a random SNR relative to `signal_rms`; clip to [-1, 1] as float32."""
    noise_rms = signal_rms * _db(-rng.uniform(*SNR_DB))
    wave = wave + np.float32(noise_rms) * _pink_noise(wave.size, rng, sample_rate)
    return np.clip(wave, -1.0, 1.0).astype(np.float32, copy=False)
