"""Does curation help? A noisy demo training set with known corruption, curated, then trained on: raw vs curated.

1. The noisy set (mmpretrain/curate/noisy_demo.py): the demo's digits + shapes training samples with 30% of
   captions swapped for a wrong sample's, 10% extra exact/near duplicate images, and every image of the demo's
   zero-shot evaluation sets (digits_val, shapes_single_val) leaked in (3/4 byte for byte, 1/4 near copies);
   truth.json says which sample is which. The demo data has faults of its own: 26 training images repeat an
   earlier one byte for byte and 16 are identical to evaluation images (`natural` in truth.json); they are
   scored apart, never counted as clean.
2. A scorer: the demo model (image + text towers) trained briefly on a small clean subset of the noisy set
   (`--scorer-samples` samples whose truth is "clean", written as their own shard set; `--scorer-steps` steps:
   1,000 and 300 by default, ~38 epochs of it; its zero-shot results are recorded too).
3. `mmpretrain curate` with that scorer as the embed model: basic filter, decontamination against the evaluation
   sets, SemDeDup, then the CLIP-score filter, so its threshold is taken over what the others left. The filter
   keeps `--top-fraction` 0.7 (one minus the nominal swap rate: the one place the corruption is assumed known),
   or `--min-score`. Decontamination and SemDeDup drop cosines >= / > 0.999: exact copies. At this scorer's
   resolution a near copy (a one-pixel shift) is no closer to its original than many distinct demo images are
   to each other (a clean sample's highest cosine with those before it in its SemDeDup cluster: median 0.93,
   95th percentile 0.995), so a threshold low enough to catch near copies removes a large share of clean data;
   they are measured, not targeted.
4. The decisions scored against truth.json: swapped captions removed, clean samples removed and lost (no copy of
   them kept), duplicate pairs resolved, leaks removed; and, from the decisions' clip_score column, the scorer's
   trade-off curve (swapped removed at a clean loss of 5/10/20%, picked with the truth: a measure of the scorer,
   not of the run's setting).
5. The demo model (image + text towers) trained at the same steps and seeds on raw and curated data (and on the
   clean samples alone, `oracle`, unless --no-oracle), evaluated zero-shot on the demo's held-out sets. The raw
   run has seen the evaluation images with their captions: its zero-shot numbers carry that contamination.

    python bench/curation_repro.py --seeds 0 --steps 400 --out bench/results/curation_repro.json

Runs on CPU (2 cores): 2-7 min for the scorer, ~1.5 min for curation, 2-12 min per training run (depending on
what else the machine runs). `--reuse` keeps every finished step (noisy set, scorer, curated set, runs);
`--decisions DIR` scores a decisions table made elsewhere instead of running curate (a check of step 4 alone).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ZEROSHOT = ["zeroshot/digits/top1", "zeroshot/shapes-colour/top1", "zeroshot/shapes-shape/top1"]
TASKS = ("eval.tasks=[{name: digits, kind: zeroshot, data: %(root)s/digits_val, label_key: label, classnames: "
         "[zero, one, two, three, four, five, six, seven, eight, nine], template_set: digits}, "
         "{name: shapes-colour, kind: zeroshot, data: %(root)s/shapes_single_val, label_key: colour, "
         "classnames: [red, green, blue, yellow, purple, orange], template_set: shapes-colour}, "
         "{name: shapes-shape, kind: zeroshot, data: %(root)s/shapes_single_val, label_key: shape, "
         "classnames: [circle, square, triangle, diamond], template_set: shapes-shape}]")


def mmpretrain(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mmpretrain.cli", *args], cwd=REPO, check=True)


def make_noisy(data_root: Path, work: Path, seed: int, reuse: bool) -> Path:
    from mmpretrain.curate.noisy_demo import TRUTH_FILE, load_truth, make_noisy_demo

    noisy = work / "noisy"
    if reuse and (noisy / TRUTH_FILE).is_file() and load_truth(noisy).get("seed") == seed:
        return noisy
    shutil.rmtree(noisy, ignore_errors=True)
    summary = make_noisy_demo(data_root, noisy, seed=seed)
    print(f"[repro] noisy set: {summary['total']} samples, {summary['counts']}", flush=True)
    return noisy


def subset(noisy: Path, out: Path, keys: set[str]) -> Path:
    """Copy the samples of `noisy` whose keys are in `keys`, every member byte for byte, into a shard set."""
    from mmpretrain.data.decode import IMAGE_EXTENSIONS
    from mmpretrain.data.safe_tar import EVERY_MEMBER, ShardFailure, read_shard
    from mmpretrain.data.shard_writer import ShardWriter
    from mmpretrain.data.shards import expand_shards

    shutil.rmtree(out, ignore_errors=True)
    with ShardWriter(out, 500, prefix="subset") as writer:
        for shard in expand_shards(str(noisy)):
            for item in read_shard(shard, EVERY_MEMBER):
                if isinstance(item, ShardFailure):
                    raise RuntimeError(f"{shard}: {item.detail}")
                if item["__key__"] in keys:
                    members = {k: v for k, v in item.items() if not k.startswith("__")}
                    image = next(ext for ext in IMAGE_EXTENSIONS if ext in members)
                    extra = {k: v for k, v in members.items() if k not in (image, "txt")}
                    writer.write(item["__key__"], members[image], image, members["txt"].decode(), None, extra)
    if writer.total != len(keys):
        raise RuntimeError(f"{out}: wrote {writer.total} of {len(keys)} samples")
    return out


def train(name: str, train_dirs: list[Path], seed: int, steps: int, work: Path, data_root: Path, reuse: bool,
          overrides: tuple[str, ...] = ()) -> dict[str, float]:
    run_dir = work / "runs" / name
    if reuse and (run_dir / "results.json").is_file():  # a run is deterministic per seed and settings
        results = json.loads((run_dir / "results.json").read_text())
        return {k: v for k, v in results.get("results", results).items() if isinstance(v, float)}
    start = time.perf_counter()
    mmpretrain("train", "demo", "model.towers=[image,text]", "model.pairs=[]", f"data_root={data_root}",
               f"data.train=[{', '.join(str(d) for d in train_dirs)}]", f"train.seed={seed}", f"train.steps={steps}",
               "train.progress=false", "train.checkpoint_every=0", f"output_dir={work / 'runs'}", f"run_name={name}",
               "--overwrite", TASKS % {"root": data_root}, *overrides)
    results = json.loads((run_dir / "results.json").read_text())
    results = {k: v for k, v in results.get("results", results).items() if isinstance(v, float)}
    seconds = time.perf_counter() - start
    print(f"[repro] {name}: {seconds:.0f} s, " + ", ".join(f"{k.split('/')[1]} {results.get(k, float('nan')):.3f}"
                                                          for k in ZEROSHOT), flush=True)
    return {"seconds": seconds, **results}


def curate(noisy: Path, scorer: Path, work: Path, data_root: Path, args: argparse.Namespace) -> tuple[Path, bool]:
    """The curated folder, and whether it was (re)written now. With --reuse, a finished curation with the same
    config is kept, and one with other thresholds is re-decided by curate itself (no new embedding)."""
    out = work / "curated"
    score = {"min_score": args.min_score} if args.min_score is not None else {"top_fraction": args.top_fraction}
    config = {
        "inputs": [str(noisy)], "output": str(out), "seed": 0, "group_shards": 1,
        "ray": {"num_cpus": args.cpus, "object_store_mb": 512},
        "stages": [
            {"type": "basic_filter", "min_caption_words": 1},
            {"type": "embed", "model": str(scorer), "batch_size": 256},
            {"type": "decontaminate", "eval": [str(data_root / "digits_val"), str(data_root / "shapes_single_val")],
             "threshold": args.contamination_threshold},
            {"type": "dedup", "clusters": 8, "threshold": args.dedup_threshold},
            {"type": "clip_score", **score},
            {"type": "write", "samples_per_shard": 500},
        ],
    }
    path, text = work / "curate.yaml", json.dumps(config, indent=1) + "\n"  # JSON is YAML
    if args.reuse and (out / "summary.json").is_file() and path.is_file() and path.read_text() == text:
        return out, False
    if not args.reuse:
        shutil.rmtree(out, ignore_errors=True)
    path.write_text(text)
    start = time.perf_counter()
    mmpretrain("curate", str(path))
    print(f"[repro] curate: {time.perf_counter() - start:.0f} s", flush=True)
    return out, True


def read_decisions(folder: Path) -> dict[str, dict[str, Any]]:
    import pyarrow.dataset as ds

    rows = ds.dataset(str(folder), format="parquet").to_table().to_pylist()
    decisions = {row["key"]: row for row in rows}
    if len(decisions) != len(rows):
        raise ValueError(f"{folder}: {len(rows) - len(decisions)} keys decided twice")
    return decisions


def _fraction(n: int, d: int) -> float | None:
    return n / d if d else None


def category(t: dict[str, Any]) -> str:
    """What a sample is for scoring: its kind, except that the demo data's own exact duplicates and copies of
    evaluation images (`natural` in truth.json) are counted apart from the clean samples."""
    return f"natural_{t['natural']}" if "natural" in t and t["kind"] == "clean" else t["kind"]


def score(truth: dict[str, dict[str, Any]], decisions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The decisions measured against truth.json (keys -> {kind, source, of, natural, natural_of...})."""
    if set(truth) != set(decisions):
        raise ValueError(f"decisions cover {len(set(truth) & set(decisions))} of {len(truth)} samples "
                         f"(+{len(set(decisions) - set(truth))} unknown keys)")
    kept = {k: bool(d["kept"]) for k, d in decisions.items()}
    by_kind: dict[str, list[str]] = {}
    for key, t in truth.items():
        by_kind.setdefault(category(t), []).append(key)
    result: dict[str, Any] = {"kept": sum(kept.values()), "total": len(kept)}
    for kind, keys in sorted(by_kind.items()):
        result[f"{kind}/removed"] = _fraction(sum(not kept[k] for k in keys), len(keys))
        result[f"{kind}/reasons"] = dict(Counter(str(decisions[k]["reason"]) for k in keys if not kept[k]))
    # A duplicate pair is resolved when at most one copy survives. An original removed while a copy of it stays
    # is no lost content, so "clean lost" counts the clean samples of which no copy (injected or the data's own,
    # with its caption) was kept.
    def original(key: str) -> str:
        while (parent := truth[key].get("of") or truth[key].get("natural_of")) is not None:
            key = parent
        return key

    content_kept = {original(k) for k, t in truth.items() if kept[k] and t["kind"] != "swapped"}
    for kind in ("exact_duplicate", "near_duplicate", "natural_exact_duplicate"):
        pairs = [(t.get("of") or t["natural_of"], k) for k in by_kind.get(kind, []) for t in [truth[k]]]
        result[f"{kind}/pairs_resolved"] = _fraction(sum(not (kept[a] and kept[b]) for a, b in pairs), len(pairs))
        result[f"{kind}/pairs_both_removed"] = _fraction(sum(not kept[a] and not kept[b] for a, b in pairs),
                                                         len(pairs))
    clean = by_kind.get("clean", [])
    result["clean/lost"] = _fraction(sum(not kept[k] and original(k) not in content_kept for k in clean), len(clean))
    result["tradeoff"] = tradeoff(truth, decisions)
    return result


def tradeoff(truth: dict[str, dict[str, Any]], decisions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Among the samples that were given a clip_score (clean and swapped only): the scorer's ranking quality
    (AUC: P[clean scores above swapped]) and the fraction of swapped samples below the threshold that removes
    5, 10 or 20% of the clean ones."""
    scored = {k: d.get("clip_score") for k, d in decisions.items() if d.get("clip_score") is not None}
    clean = sorted(v for k, v in scored.items() if category(truth[k]) == "clean")
    swapped = sorted(v for k, v in scored.items() if truth[k]["kind"] == "swapped")
    if not clean or not swapped:
        return {}
    import numpy as np

    c, s = np.asarray(clean), np.asarray(swapped)
    ranks = np.searchsorted(s, c, side="left") + np.searchsorted(s, c, side="right")  # ties count half
    out: dict[str, Any] = {"auc": float(ranks.sum() / (2 * len(c) * len(s))), "clean": len(c), "swapped": len(s)}
    for loss in (0.05, 0.10, 0.20):
        threshold = float(np.quantile(c, loss))
        out[f"swapped_removed_at_clean_loss_{loss:.2f}"] = float((s < threshold).mean())
    return out


def summarise(rows: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for condition, runs in rows.items():
        table[condition] = {}
        for key in ZEROSHOT:
            values = [r[key] for r in runs if key in r]
            if values:
                table[condition][key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return table


def print_curation(m: dict[str, Any]) -> None:
    print(f"\ncuration: kept {m['kept']} of {m['total']}")
    for kind in ("swapped", "clean", "exact_duplicate", "near_duplicate", "leak_exact", "leak_near",
                 "natural_exact_duplicate", "natural_exact_leak"):
        if f"{kind}/removed" in m:
            extra = f"  lost {m['clean/lost']:.3f}" if kind == "clean" else ""
            extra += (f"  pairs resolved {m[f'{kind}/pairs_resolved']:.3f}"
                      if m.get(f"{kind}/pairs_resolved") is not None else "")
            print(f"  {kind:23s} removed {m[f'{kind}/removed']:.3f}{extra}  {m[f'{kind}/reasons']}")
    t = m.get("tradeoff")
    if t:
        print(f"  scorer: AUC {t['auc']:.3f}; swapped removed at clean loss 5/10/20%: "
              f"{t['swapped_removed_at_clean_loss_0.05']:.3f} / {t['swapped_removed_at_clean_loss_0.10']:.3f} / "
              f"{t['swapped_removed_at_clean_loss_0.20']:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps of the raw/curated/oracle runs")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of the noisy set and the scorer subset")
    parser.add_argument("--scorer-samples", type=int, default=1000, help="clean samples the scorer trains on")
    parser.add_argument("--scorer-steps", type=int, default=300)
    parser.add_argument("--top-fraction", type=float, default=0.7,
                        help="share of the deduplicated, decontaminated samples the CLIP-score filter keeps")
    parser.add_argument("--min-score", type=float, default=None, help="a CLIP-score threshold instead")
    parser.add_argument("--dedup-threshold", type=float, default=0.999,
                        help="SemDeDup cosine; at the scorer's resolution only exact copies separate from clean")
    parser.add_argument("--contamination-threshold", type=float, default=0.999, help="(see --dedup-threshold)")
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs for curate")
    parser.add_argument("--decisions", type=Path, help="score this decisions folder instead of running curate "
                                                       "(no training runs but raw)")
    parser.add_argument("--no-oracle", dest="oracle", action="store_false",
                        help="skip the run on the truly clean samples alone")
    parser.add_argument("--no-train", dest="train", action="store_false", help="stop after scoring curation")
    parser.add_argument("--reuse", action="store_true", help="keep finished steps instead of redoing them")
    parser.add_argument("--data-root", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "curation-repro")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "curation_repro.json")
    args = parser.parse_args()
    from mmpretrain.curate.noisy_demo import load_truth
    from mmpretrain.data.demo_data import generate_demo_data
    from mmpretrain.engine.checkpoint import write_atomically

    generate_demo_data(args.data_root)  # kept when complete
    data_root, work = args.data_root.resolve(), args.work.resolve()
    noisy = make_noisy(data_root, work, args.noise_seed, args.reuse)
    truth = load_truth(noisy)["samples"]
    clean_keys = sorted(k for k, t in truth.items() if category(t) == "clean")
    scorer_keys = set(random.Random(f"scorer-{args.noise_seed}").sample(clean_keys, args.scorer_samples))
    scorer_data = work / "scorer-clean"
    if not (args.reuse and (scorer_data / "sizes.json").is_file()):
        subset(noisy, scorer_data, scorer_keys)
    scorer_results = train("scorer", [scorer_data], 0, args.scorer_steps, work, data_root, args.reuse)
    scorer = work / "runs" / "scorer"

    curated, recurated = (None, False) if args.decisions else curate(noisy, scorer, work, data_root, args)
    decisions = read_decisions(args.decisions or curated / "decisions")
    metrics = score(truth, decisions)
    print_curation(metrics)

    rows: dict[str, list[dict]] = {}
    if args.train:
        conditions: dict[str, list[Path]] = {"raw": [noisy]}
        if curated is not None:
            conditions["curated"] = [curated / "shards"]
        if args.oracle:
            oracle = work / "oracle-clean"
            if not (args.reuse and (oracle / "sizes.json").is_file()):
                subset(noisy, oracle, set(clean_keys))
            conditions["oracle"] = [oracle]
        for seed in args.seeds:
            for condition, dirs in conditions.items():
                reuse = args.reuse and not (condition == "curated" and recurated)  # new curated shards: retrain
                rows.setdefault(condition, []).append(
                    train(f"{condition}-s{seed}", dirs, seed, args.steps, work, data_root, reuse))
    table = summarise(rows)
    if table:
        names = list(table)
        print(f"\n{'metric':30s}" + "".join(f"{n:>19s}" for n in names))
        for key in ZEROSHOT:
            print(f"{key:30s}" + "".join(f"{table[n][key][0]:11.3f} ± {table[n][key][1]:.3f}" for n in names))
    noisy_summary = {k: v for k, v in load_truth(noisy).items() if k != "samples"}
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "noisy": noisy_summary,
              "scorer": {"samples": len(scorer_keys), "steps": args.scorer_steps, "results": scorer_results},
              "curation": metrics, "runs": rows, "table": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out, lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n"))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
