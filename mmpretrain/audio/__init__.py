"""Audio for CLAP-style training: reading clips in the data workers (decode), log-mel features and SpecAugment on
the training device (features), and their settings (`model.audio`, config)."""

from mmpretrain.audio.config import AudioConfig, SpecAugmentConfig
from mmpretrain.audio.decode import (AUDIO_EXTENSIONS, check_silence, crop_or_pad, eval_crops, from_transport,
                                     load_clip, read_audio, resample, to_transport)
from mmpretrain.audio.features import LogMel, SpecAugment, mel_filterbank, power_to_db

__all__ = [
    "AUDIO_EXTENSIONS", "AudioConfig", "LogMel", "SpecAugment", "SpecAugmentConfig", "check_silence", "crop_or_pad",
    "eval_crops", "from_transport", "load_clip", "mel_filterbank", "power_to_db", "read_audio", "resample",
    "to_transport",
]
