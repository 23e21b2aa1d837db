"""`model.audio`: how audio is read, cut to clips, turned into log-mel features and augmented.

The defaults follow the 16 kHz recipes (AST, Whisper, BEATs) rather than LAION-CLAP's 48 kHz: a 10 s clip is 3x
fewer samples to resample, hand over and transform, and web captions rarely describe content above 8 kHz. The
mel front end takes LAION-CLAP's choices where they do not depend on the rate (64 mel bands from 50 Hz, a 10 ms
hop, Slaney mel scale) and a 25 ms window as in AST/Whisper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from mmpretrain.errors import require


@dataclass
class SpecAugmentConfig:
    """SpecAugment masks on the log-mel in training (Park et al. 2019); a count or a width of 0 turns a kind off.

    Widths are drawn uniformly in [0, param) per mask and example. The defaults are LAION-CLAP's HTS-AT ones (two
    stripes of each kind, up to 8 of 64 mel bands and 64 of ~1000 frames).
    """

    freq_mask_param: int = 8     # the widest frequency mask, in mel bands
    time_mask_param: int = 64    # the widest time mask, in frames (hop_length samples each)
    num_freq_masks: int = 2
    num_time_masks: int = 2

    def validate(self) -> None:
        for name in ("freq_mask_param", "time_mask_param", "num_freq_masks", "num_time_masks"):
            value = getattr(self, name)
            require(value >= 0, f"model.audio.spec_augment.{name}", value, ">= 0 (0: off)")

    @property
    def enabled(self) -> bool:
        return (self.freq_mask_param > 0 and self.num_freq_masks > 0) or \
            (self.time_mask_param > 0 and self.num_time_masks > 0)


@dataclass
class AudioConfig:
    """Audio decoding limits, clip length, the log-mel front end and its augmentation."""

    sample_rate: int = 16_000        # every clip is resampled to this rate (Hz)
    clip_seconds: float = 10.0       # training crops / pads every clip to this length (CLAP, AudioSet)
    # Longer files are skipped as audio_too_long, judged from the header before any sample is decoded: decoding
    # is the cost (a 2-minute 48 kHz stereo file is 46 MB of float32 in the worker) and one crop is all we use.
    max_seconds: float = 120.0
    n_fft: int = 512                 # FFT size; 32 ms at 16 kHz, 257 frequency bins
    win_length: int = 400            # Hann window (25 ms), centred in the n_fft frame as librosa/torch do
    hop_length: int = 160            # 10 ms: a 10 s clip is 1001 frames (centred frames)
    n_mels: int = 64
    f_min: float = 50.0              # Hz; below is mostly hum and rumble
    f_max: Optional[float] = None    # Hz; None = the Nyquist frequency (sample_rate / 2)
    mel_scale: Literal["slaney", "htk"] = "slaney"  # filters are always Slaney area-normalised
    amin: float = 1e-10              # power floor before the log: 10*log10(amin) = -100 dB
    top_db: Optional[float] = 80.0   # each example's log-mel is clamped to (its max - top_db); None = no clamp
    # A file whose peak |amplitude| is below this (full scale = 1) is skipped as audio_silent. 1e-4 is -80 dBFS,
    # about 3 steps of 16-bit PCM: digital silence and dither, not quiet recordings.
    silence_threshold: float = 1e-4
    # Evaluation embeds this many evenly spaced crops of a long clip and averages them (1 = the centre crop).
    eval_crops: int = 1
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def nyquist(self) -> float:
        return self.sample_rate / 2

    @property
    def mel_f_max(self) -> float:
        return self.nyquist if self.f_max is None else self.f_max

    def validate(self) -> None:
        require(self.sample_rate > 0, "model.audio.sample_rate", self.sample_rate, "> 0 (Hz)")
        require(self.clip_seconds > 0, "model.audio.clip_seconds", self.clip_seconds, "> 0")
        require(self.max_seconds >= self.clip_seconds, "model.audio.max_seconds", self.max_seconds,
                f">= model.audio.clip_seconds ({self.clip_seconds})")
        require(self.n_fft >= 2, "model.audio.n_fft", self.n_fft, ">= 2")
        require(0 < self.win_length <= self.n_fft, "model.audio.win_length", self.win_length,
                f"in [1, model.audio.n_fft = {self.n_fft}]")
        require(self.hop_length > 0, "model.audio.hop_length", self.hop_length, "> 0")
        # torch.stft's reflect padding of n_fft // 2 needs a longer input
        require(self.clip_samples > self.n_fft // 2, "model.audio.clip_seconds", self.clip_seconds,
                f"a clip longer than n_fft / 2 = {self.n_fft // 2} samples")
        require(self.n_mels > 0, "model.audio.n_mels", self.n_mels, "> 0")
        require(0 <= self.f_min < self.nyquist, "model.audio.f_min", self.f_min,
                f"in [0, sample_rate / 2 = {self.nyquist:g}) Hz")
        require(self.f_max is None or self.f_min < self.f_max <= self.nyquist, "model.audio.f_max", self.f_max,
                f"in (f_min, sample_rate / 2 = {self.nyquist:g}] Hz, or null for sample_rate / 2")
        require(self.mel_scale in ("slaney", "htk"), "model.audio.mel_scale", self.mel_scale, "'slaney' or 'htk'")
        require(self.amin > 0, "model.audio.amin", self.amin, "> 0")
        require(self.top_db is None or self.top_db > 0, "model.audio.top_db", self.top_db, "> 0, or null")
        require(0 <= self.silence_threshold < 1, "model.audio.silence_threshold", self.silence_threshold,
                "in [0, 1) (0: never skip)")
        require(self.eval_crops >= 1, "model.audio.eval_crops", self.eval_crops, ">= 1")
        self.spec_augment.validate()
