"""Log-mel features and SpecAugment, computed on the training device from the clips the workers hand over.

`LogMel` matches librosa (`feature.melspectrogram(center=True, pad_mode="reflect", power=2, norm="slaney")` then
`power_to_db(ref=1.0)`; tests/audio compares them). Its Hann window and mel filterbank are constants, not
parameters or buffers: DeepSpeed's bf16/fp16 engines cast every floating buffer of the model to half precision,
and in bf16 (8 significant bits) each filter weight would be off by up to 0.4%. They are built lazily in
float32 on each device they are needed on and kept in a plain dict, which `.to()`, `.half()` and `state_dict()`
do not see (so checkpoints hold no copy of them either), and the transform runs in float32 with autocast off.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from mmpretrain.audio.config import AudioConfig, SpecAugmentConfig
from mmpretrain.audio.decode import from_transport

# The Slaney (Auditory Toolbox) mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above it with 27
# mels per factor of 6.4 in frequency.
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    linear = hz / _SLANEY_HZ_PER_MEL
    log = _SLANEY_BREAK_MEL + torch.log(torch.clamp(hz, min=_SLANEY_BREAK_HZ) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
    return torch.where(hz >= _SLANEY_BREAK_HZ, log, linear)


def mel_to_hz(mel: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    linear = mel * _SLANEY_HZ_PER_MEL
    log = _SLANEY_BREAK_HZ * torch.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_BREAK_MEL))
    return torch.where(mel >= _SLANEY_BREAK_MEL, log, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float,
                   scale: str = "slaney") -> torch.Tensor:
    """Triangular mel filters `[n_mels, n_fft // 2 + 1]` (float64), each normalised to unit area in Hz (Slaney).

    Band i rises from centre frequency i to i + 1 and falls to i + 2, the n_mels + 2 centres being evenly spaced
    on the mel scale from f_min to f_max; the weights are evaluated at the FFT bin frequencies.
    """
    bins = torch.fft.rfftfreq(n_fft, d=1.0 / sample_rate, dtype=torch.float64)
    mel_range = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64), scale)
    centres = mel_to_hz(torch.linspace(mel_range[0].item(), mel_range[1].item(), n_mels + 2, dtype=torch.float64),
                        scale)
    widths = centres.diff()                                   # [n_mels + 1]
    offsets = centres[:, None] - bins[None, :]                # [n_mels + 2, bins]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return weights * (2.0 / (centres[2:] - centres[:-2]))[:, None]


def power_to_db(power: torch.Tensor, amin: float, top_db: Optional[float]) -> torch.Tensor:
    """librosa.power_to_db with ref=1.0, per example: 10 * log10(max(power, amin)), then, with top_db, raised to at
    least (that example's maximum - top_db). The maximum is over the last two dims ([..., mels, frames])."""
    db = 10.0 * torch.log10(torch.clamp(power, min=amin))
    if top_db is not None:
        db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - top_db)
    return db


class LogMel(nn.Module):
    """Waves `[B, T]` (int16 PCM, float16, bfloat16 or float32) -> log-mel `[B, n_mels, 1 + T // hop_length]`
    float32 in dB (power 2, ref 1.0: a full-scale sine's band is near 0 dB, the floor 10*log10(amin))."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        self.config = config
        # per device: (the periodic Hann window, the filterbank), float32; see the module docstring for why these
        # are not buffers
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _window_and_filters(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:
            c = self.config
            window = torch.hann_window(c.win_length, periodic=True, dtype=torch.float32, device=device)
            filters = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.mel_f_max, c.mel_scale)
            self._constants[device] = (window, filters.to(device=device, dtype=torch.float32))
        return self._constants[device]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"LogMel expects waves [batch, samples], got shape {tuple(wave.shape)}")
        c = self.config
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = from_transport(wave) if wave.dtype == torch.int16 else wave.to(torch.float32)
            window, filters = self._window_and_filters(x.device)
            # a win_length < n_fft window is zero-padded on both sides to n_fft, as librosa does
            spec = torch.stft(x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=window,
                              center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
            # |X|^2, [B, n_fft // 2 + 1, frames]; summing over view_as_real's last axis of 2 was 7x slower on CPU
            power = spec.real.square() + spec.imag.square()
            return power_to_db(torch.matmul(filters, power), c.amin, c.top_db)


class SpecAugment(nn.Module):
    """Random frequency and time masks on log-mels `[B, mels, frames]` in training; the identity in eval mode.

    Each example gets its own masks: per mask a width uniform in [0, param) (capped at the axis length) and a start
    uniform over the positions where it fits, as torchaudio's iid masking does. Masked cells take the example's
    mean log-mel rather than torchaudio's 0: on this unnormalised dB scale 0 dB is the level of a full-scale
    tone, whereas the mean is a neutral value of the example's own. The draws use torch's generator of the input's
    device, so they follow the trainer's seeding.
    """

    def __init__(self, config: SpecAugmentConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not self.training or not c.enabled:
            return mel
        batch, bands, frames = mel.shape
        masked = (_stripes(batch, bands, c.freq_mask_param, c.num_freq_masks, mel.device)[:, :, None]
                  | _stripes(batch, frames, c.time_mask_param, c.num_time_masks, mel.device)[:, None, :])
        return torch.where(masked, mel.mean(dim=(1, 2), keepdim=True), mel)


def _stripes(batch: int, size: int, param: int, count: int, device: torch.device) -> torch.Tensor:
    """`[batch, size]` bool, True inside `count` random stripes per row (see SpecAugment)."""
    if param == 0 or count == 0:
        return torch.zeros(batch, size, dtype=torch.bool, device=device)
    widths = (torch.rand(count, batch, 1, device=device) * min(param, size)).long()
    starts = (torch.rand(count, batch, 1, device=device) * (size - widths)).long()
    positions = torch.arange(size, device=device)
    return ((positions >= starts) & (positions < starts + widths)).any(dim=0)
