"""Audio data path per worker process: ours (mmpretrain.audio) against the plain soundfile + librosa path, and the
log-mel on the training device against librosa's per-clip melspectrogram.

Clips: `--clips` generated ~10 s, 44.1 kHz stereo, 16-bit FLAC (tones with harmonics and noise under moving
envelopes, so FLAC compresses them about as much as music), target 16 kHz mono 10 s clips (model.audio defaults).

- worker path, in this process with one torch thread (as DataLoader workers have) and one BLAS thread, per clip:
  ours = read_audio (soundfile, header checked first) + silence check + resample (soxr HQ) + random crop +
  to_transport (int16); baseline = librosa.load(sr=16000) (soundfile, mono mix, soxr HQ: what LAION-CLAP's
  loaders call) + the same random crop + float32 tensor. Stage times for ours are reported too.
- hand-over: one DataLoader worker, batches of --batch, samples/s seen by the training process, with the
  bytes each sample takes in the batch (int16 vs float32).
- log-mel per batch of --batch clips on the CPU: LogMel (torch.stft, 1 and 2 torch threads) vs librosa's
  melspectrogram + power_to_db clip by clip (numpy's FFT; 1 and 2 BLAS threads for its mel product), same
  settings. Threads are capped (threadpoolctl) because idle BLAS threads spinning on a busy 2-core machine made
  librosa's figure swing by over 10x between rounds.

    python bench/audio_pipeline.py                       # 64 clips, 3 rounds
    python bench/audio_pipeline.py --clips 16 --rounds 1 # a quick look

Figures are medians over alternating rounds; ratios are ours' speed / the baseline's (above 1: ours is faster),
the median and the extremes of the per-round ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import random
import statistics
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmpretrain.audio import (AudioConfig, LogMel, check_silence, crop_or_pad, read_audio,  # noqa: E402
                              resample, to_transport)

SOURCE_RATE = 44_100


def make_clips(count: int, seconds: float, seed: int = 0) -> list[bytes]:
    """Stereo FLAC clips of a few harmonic tones and filtered noise whose levels move (not a static signal)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SOURCE_RATE)) / SOURCE_RATE
    clips = []
    for _ in range(count):
        wave = np.zeros((t.size, 2))
        for _ in range(4):
            f0, rate = rng.uniform(80, 800), rng.uniform(0.2, 3)
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
            tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6)) * envelope
            wave += np.outer(tone, rng.uniform(0.2, 1, 2))
        noise = np.convolve(rng.standard_normal(t.size), np.ones(8) / 8, mode="same")
        wave += 0.3 * np.outer(noise, [1, 1])
        wave *= 0.5 / np.abs(wave).max()
        buffer = io.BytesIO()
        soundfile.write(buffer, wave.astype(np.float32), SOURCE_RATE, format="FLAC", subtype="PCM_16")
        clips.append(buffer.getvalue())
    return clips


def ours(data: bytes, config: AudioConfig, rng: random.Random, stages: dict[str, float]) -> torch.Tensor:
    """mmpretrain.audio.load_clip + to_transport, stage by stage (the same calls, timed)."""
    t0 = time.perf_counter()
    wave, rate = read_audio(data, config)
    check_silence(wave, config)
    t1 = time.perf_counter()
    wave = resample(wave, rate, config.sample_rate)
    t2 = time.perf_counter()
    clip = crop_or_pad(wave, config.clip_samples, rng)
    t3 = time.perf_counter()
    pcm = to_transport(clip)
    t4 = time.perf_counter()
    for name, spent in zip(("decode", "resample", "crop", "to int16"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
        stages[name] = stages.get(name, 0.0) + spent
    return pcm


def baseline(data: bytes, config: AudioConfig, rng: random.Random) -> torch.Tensor:
    wave, _ = librosa.load(io.BytesIO(data), sr=config.sample_rate, mono=True)
    return torch.from_numpy(crop_or_pad(wave, config.clip_samples, rng))


class Clips(Dataset):
    def __init__(self, clips: list[bytes], config: AudioConfig, kind: str, passes: int) -> None:
        self.clips, self.config, self.kind, self.passes = clips, config, kind, passes

    def __len__(self) -> int:
        return len(self.clips) * self.passes

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = random.Random(index)
        data = self.clips[index % len(self.clips)]
        return ours(data, self.config, rng, {}) if self.kind == "ours" else baseline(data, self.config, rng)


def worker_path(clips: list[bytes], config: AudioConfig) -> dict[str, float]:
    """Samples/s of each path in this process, and the seconds per sample of our stages."""
    torch.set_num_threads(1)
    with threadpool_limits(1):
        return _worker_path(clips, config)


def _worker_path(clips: list[bytes], config: AudioConfig) -> dict[str, float]:
    ours(clips[0], config, random.Random(0), {})  # first calls load libraries lazily (librosa: ~2 s); untimed
    baseline(clips[0], config, random.Random(0))
    stages: dict[str, float] = {}
    start = time.perf_counter()
    for i, data in enumerate(clips):
        ours(data, config, random.Random(i), stages)
    row = {"ours": len(clips) / (time.perf_counter() - start)}
    start = time.perf_counter()
    for i, data in enumerate(clips):
        baseline(data, config, random.Random(i))
    row["baseline"] = len(clips) / (time.perf_counter() - start)
    row.update({f"ours {name} ms": 1000 * spent / len(clips) for name, spent in stages.items()})
    return row


def handover(clips: list[bytes], config: AudioConfig, batch: int, passes: int) -> dict[str, float]:
    """Samples/s out of one DataLoader worker; the first batch (worker start-up) is not timed."""
    row = {}
    for kind in ("ours", "baseline"):
        loader = DataLoader(Clips(clips, config, kind, passes), batch_size=batch, num_workers=1)
        batches = iter(loader)
        first = next(batches)
        row[f"{kind} bytes/sample"] = first.element_size()
        start, seen = time.perf_counter(), 0
        for item in batches:
            seen += len(item)
        row[kind] = seen / (time.perf_counter() - start)
    return row


def log_mel(clips: list[bytes], config: AudioConfig, batch: int, repeats: int = 3) -> dict[str, float]:
    """ms per batch (the best of `repeats`): LogMel on int16 (1 and 2 torch threads) and librosa clip by clip;
    and the largest gap between their results."""
    waves = [crop_or_pad(resample(*read_audio(d, config), config.sample_rate), config.clip_samples, None)
             for d in clips[:batch]]
    pcm = torch.stack([to_transport(w) for w in waves])
    module = LogMel(config)
    floats = (pcm.numpy() / 32768).astype(np.float32)  # the same int16-quantised input

    def clip_by_clip() -> list[np.ndarray]:
        return [librosa.power_to_db(librosa.feature.melspectrogram(
            y=w, sr=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length,
            win_length=config.win_length, center=True, pad_mode="reflect", power=2.0, n_mels=config.n_mels,
            fmin=config.f_min, fmax=config.mel_f_max, htk=config.mel_scale == "htk", norm="slaney"),
            ref=1.0, amin=config.amin, top_db=config.top_db) for w in floats]

    row = {}
    for threads in (1, 2):  # torch's threads for ours, numpy's BLAS threads (the mel matrix product) for librosa
        torch.set_num_threads(threads)
        module(pcm)  # builds the window and filterbank once, as training does
        row[f"ours {threads} thread ms"] = 1000 * min(_seconds(lambda: module(pcm)) for _ in range(repeats))
        with threadpool_limits(threads):
            theirs = clip_by_clip()
            row[f"librosa {threads} thread ms"] = 1000 * min(_seconds(clip_by_clip) for _ in range(repeats))
    row["max |ours - librosa| dB"] = float(np.abs(module(pcm).numpy() - np.stack(theirs)).max())
    return row


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the generated clips")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--passes", type=int, default=2, help="passes over the clips per DataLoader round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the rounds' figures here")
    args = parser.parse_args(argv)
    if args.clips < args.batch * 2:
        parser.error("--clips must be at least twice --batch (the first batch is not timed)")
    if importlib.util.find_spec("laion_clap") is None:
        print("laion_clap is not installed (laion_clap 1.1.7 requires numpy<2); its loaders call librosa.load, "
              "which is the baseline here")
    config = AudioConfig()
    clips = make_clips(args.clips, args.seconds)
    print(f"{args.clips} clips: {args.seconds:g} s, {SOURCE_RATE} Hz stereo FLAC, "
          f"{statistics.mean(map(len, clips)) / 1024:.0f} KiB on average -> {config.sample_rate} Hz mono "
          f"{config.clip_seconds:g} s; torch {torch.__version__}, librosa {librosa.__version__}")
    rounds = []
    for r in range(args.rounds):
        rounds.append({"worker": worker_path(clips, config),
                       "handover": handover(clips, config, args.batch, args.passes),
                       "log_mel": log_mel(clips, config, args.batch)})
        torch.set_num_threads(2)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    worker = [r["worker"] for r in rounds]
    hand = [r["handover"] for r in rounds]
    mel = [r["log_mel"] for r in rounds]
    header = "what (median of " + str(args.rounds) + " rounds)"
    print(f"\n{header:<44} {'ours':>9} {'baseline':>9} {'ours/base':>9} {'min/max ratio':>14}")

    def line(label: str, rows: list[dict[str, float]], ours_key: str, base_key: str, faster_is_more: bool) -> None:
        ratios = [(r[ours_key] / r[base_key]) if faster_is_more else (r[base_key] / r[ours_key]) for r in rows]
        o, b = median(rows, ours_key), median(rows, base_key)
        print(f"{label:<44} {o:>9.1f} {b:>9.1f} {statistics.median(ratios):>9.2f} "
              f"{min(ratios):>6.2f} / {max(ratios):<5.2f}")

    line("worker path, samples/s (1 process)", worker, "ours", "baseline", True)
    line(f"DataLoader 1 worker, batch {args.batch}, samples/s", hand, "ours", "baseline", True)
    o, b = median(hand, "ours bytes/sample"), median(hand, "baseline bytes/sample")
    print(f"{'hand-over bytes per audio sample':<44} {o:>9.0f} {b:>9.0f} {b / o:>8.1f}x smaller")
    for threads in (1, 2):
        line(f"log-mel ms per batch of {args.batch} ({threads} thread)", mel, f"ours {threads} thread ms",
             f"librosa {threads} thread ms", False)
    print("\nour worker stages, ms per clip: " + ", ".join(
        f"{name} {median(worker, f'ours {name} ms'):.2f}" for name in ("decode", "resample", "crop", "to int16")))
    print(f"largest |ours - librosa| log-mel gap: {max(r['max |ours - librosa| dB'] for r in mel):.2g} dB")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
