"""Resume cost against the position in the pass: replaying the pass (the previous resume) vs seeking (now).

One reader, one source of tiny samples (2x2 PNG + caption) in shards of `--per-shard`, the default shuffle
buffer. For each position P: a cursor reads P samples from the start of its pass, as the previous resume did to
get back to P (raw tar members through the shuffle buffer, nothing decoded): that time is the replay's cost.
Its state is then saved, and a new cursor built from that state hands out its first sample: that time is the
seeking resume's cost (it reads the buffered samples back by offset and enters the current shard at the saved
byte offset). Both also check that the resumed cursor continues exactly where the first one would have.

    python bench/resume_cost.py                                  # 10^6 samples, positions 10^3..10^6
    python bench/resume_cost.py --samples 20000 --positions 100,10000 --per-shard 1000   # a quick look

The shards are written once into --workdir (~2 KiB per sample) and reused; files are read from the page cache,
so the replay's figure is a lower bound for shards on network storage.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmpretrain.data.cursor import PassPlan, SourceCursor  # noqa: E402
from mmpretrain.data.sources import resolve_sources  # noqa: E402

MEMBERS = (frozenset({"png", "txt"}), False, 2**20)


def write_shards(folder: Path, samples: int, per_shard: int) -> None:
    """Tiny samples (the cost measured is reading and seeking, not decoding); skipped if already written."""
    marker = folder / f"done-{samples}-{per_shard}"
    if marker.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.tar"):
        old.unlink()
    png = io.BytesIO()
    Image.new("RGB", (2, 2), (1, 2, 3)).save(png, format="PNG")
    sizes, index = {}, 0
    with tqdm(total=samples, desc="writing shards", unit="sample") as progress:
        for shard in range((samples + per_shard - 1) // per_shard):
            name = f"shard-{shard:06d}.tar"
            count = min(per_shard, samples - index)
            with wds.TarWriter(str(folder / name), encoder=False) as sink:
                for _ in range(count):
                    sink.write({"__key__": f"{index:09d}", "png": png.getvalue(), "txt": b"a caption"})
                    index += 1
            sizes[name] = count
            progress.update(count)
    (folder / "sizes.json").write_text(json.dumps(sizes))
    marker.touch()


def measure(folder: Path, position: int, buffer: int, check: int = 200) -> dict[str, float]:
    (source,) = resolve_sources([str(folder)], [], False)
    plan = PassPlan(source, 0, seed=0, rank=0, reader=0, num_readers=1, world_size=1, resampled=False)
    first = SourceCursor(plan, buffer, read_args=MEMBERS)
    start = time.perf_counter()
    for _ in range(position):
        next(first)
    replay = time.perf_counter() - start
    state = first.snapshot()
    expected = [next(first)[2]["__key__"] for _ in range(check)]

    start = time.perf_counter()
    resumed = SourceCursor(plan, buffer, read_args=MEMBERS, state=state)
    keys = [next(resumed)[2]["__key__"]]
    seek = time.perf_counter() - start
    keys += [next(resumed)[2]["__key__"] for _ in range(check - 1)]
    if keys != expected:
        raise AssertionError(f"position {position}: the resumed cursor did not continue where it was saved")
    return {"position": position, "replay_s": replay, "seek_s": seek}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000, help="samples in the pass")
    parser.add_argument("--per-shard", type=int, default=10_000)
    parser.add_argument("--positions", default="1000,10000,100000,999000",
                        help="comma-separated positions in the pass to resume at")
    parser.add_argument("--buffer", type=int, default=2000, help="shuffle buffer (data.shuffle_buffer)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmpretrain-resume-bench")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    positions = [int(p) for p in args.positions.split(",")]
    if max(positions) + 200 > args.samples:
        parser.error("every position must leave 200 samples of the pass to check the continuation")
    folder = args.workdir / "shards"
    write_shards(folder, args.samples, args.per_shard)
    rows = [measure(folder, p, args.buffer) for p in positions]
    print(f"{'position':>10}  {'replay (s)':>10}  {'seek (s)':>9}  {'replay/seek':>11}")
    for row in rows:
        print(f"{row['position']:>10,}  {row['replay_s']:>10.3f}  {row['seek_s']:>9.3f}  "
              f"{row['replay_s'] / row['seek_s']:>11.1f}")
    seeks = [r["seek_s"] for r in rows]
    print(f"seek: largest / smallest position cost = {seeks[-1] / seeks[0]:.2f}x "
          f"(max/min over positions {max(seeks) / min(seeks):.2f}x)")
    if args.out:
        args.out.write_text(json.dumps({"samples": args.samples, "per_shard": args.per_shard,
                                        "buffer": args.buffer, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
