"""Do generated hard negatives teach attribute binding? NegCLIP's result, at demo scale, with and without them.

For each seed, two runs that differ only in `data.negatives_per_sample` / `data.online_negatives` (same data, steps,
seed, model): the demo's image and text towers trained on the demo's digits and shape scenes. Each is evaluated on
the demo's zero-shot tasks and on a held-out compositional set built from the *validation* scenes with
`mmpretrain negatives write --compositional` (swap_attributes: which shape has which colour; replace_attribute;
swap_relation; replace_object). Prints a table of means and spreads and writes it as JSON.

    python bench/negatives_repro.py --seeds 0 1 2 --steps 400 --out bench/results/negatives_repro.json

Runs on CPU in ~3 min per run (2 cores); the first call writes data/demo if absent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVAL_TYPES = ["swap_attributes", "replace_attribute", "swap_relation", "replace_object"]
ZEROSHOT = ["zeroshot/digits/top1", "zeroshot/shapes-colour/top1", "zeroshot/shapes-shape/top1"]


def mmpretrain(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mmpretrain.cli", *args], cwd=REPO, check=True)


def build_sets(data_root: Path, out: Path) -> Path:
    from mmpretrain.data.demo_data import generate_demo_data

    generate_demo_data(data_root)
    comp = out / "compositional-shapes-val"
    mmpretrain("negatives", "write", str(data_root / "shapes_val"), str(comp), "--compositional",
               "--types", ",".join(EVAL_TYPES), "--seed", "1", "--no-progress")
    return comp


def run(name: str, seed: int, steps: int, out: Path, comp: Path, data_root: Path, negatives: list[str],
        reuse: bool = False, overrides: tuple[str, ...] = ()) -> dict:
    run_dir = out / "runs" / name
    if reuse and (run_dir / "results.json").is_file():  # a run is deterministic per seed and settings
        return {k: v for k, v in json.loads((run_dir / "results.json").read_text()).items() if isinstance(v, float)}
    tasks = ("eval.tasks=[{name: digits, kind: zeroshot, data: %(root)s/digits_val, label_key: label, classnames: "
             "[zero, one, two, three, four, five, six, seven, eight, nine], template_set: digits}, "
             "{name: shapes-colour, kind: zeroshot, data: %(root)s/shapes_single_val, label_key: colour, "
             "classnames: [red, green, blue, yellow, purple, orange], template_set: shapes-colour}, "
             "{name: shapes-shape, kind: zeroshot, data: %(root)s/shapes_single_val, label_key: shape, "
             "classnames: [circle, square, triangle, diamond], template_set: shapes-shape}, "
             "{name: held-out, kind: compositional, format: shards, data: %(comp)s}]") % {"root": data_root,
                                                                                           "comp": comp}
    start = time.perf_counter()
    mmpretrain("train", "demo", "model.towers=[image,text]", "model.pairs=[]", f"data_root={data_root}",
               f"train.seed={seed}", f"train.steps={steps}", "train.progress=false", "train.checkpoint_every=0",
               f"output_dir={out / 'runs'}", f"run_name={name}", "--overwrite", tasks, *overrides, *negatives)
    results = json.loads((run_dir / "results.json").read_text())
    results = results.get("results", results)
    seconds = time.perf_counter() - start
    print(f"[repro] {name}: {seconds:.0f} s, binding {results.get('compositional/held-out/swap_attributes/acc')}",
          flush=True)
    return {"seconds": seconds, **{k: v for k, v in results.items() if isinstance(v, float)}}


def summarise(rows: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    keys = ZEROSHOT + [f"compositional/held-out/{t}/acc" for t in EVAL_TYPES]
    table = {}
    for condition, runs in rows.items():
        table[condition] = {}
        for key in keys:
            values = [r[key] for r in runs if key in r]
            if values:
                table[condition][key] = (statistics.mean(values),
                                         statistics.stdev(values) if len(values) > 1 else 0.0)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--k", type=int, default=3, help="hard negatives per sample in the negatives runs")
    parser.add_argument("--types", default="swap_attributes,replace_attribute,swap_relation,replace_object",
                        help="generator types used in training")
    parser.add_argument("--mix", default="", help="type weights for the negatives runs, e.g. swap_attributes=4")
    parser.add_argument("--label", default="with", help="name of the negatives condition (its run directories)")
    parser.add_argument("--reuse", action="store_true", help="take finished runs' results.json instead of rerunning")
    parser.add_argument("--override", action="append", default=[],
                        help="a config override for both conditions, e.g. data.num_workers=8 (repeatable)")
    parser.add_argument("--data-root", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "negatives-repro")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "negatives_repro.json")
    args = parser.parse_args()

    comp = build_sets(args.data_root, args.work)
    negatives = [f"data.negatives_per_sample={args.k}", f"data.online_negatives.types=[{args.types}]"]
    if args.mix:
        weights = ", ".join(f"{t}: {w}" for t, w in (item.split("=") for item in args.mix.split(",")))
        negatives.append(f"data.online_negatives.mix={{{weights}}}")
    rows: dict[str, list[dict]] = {"without": [], args.label: []}
    for seed in args.seeds:
        rows["without"].append(run(f"without-s{seed}", seed, args.steps, args.work, comp, args.data_root, [],
                                   args.reuse, tuple(args.override)))
        rows[args.label].append(run(f"{args.label}-s{seed}", seed, args.steps, args.work, comp, args.data_root,
                                    negatives, args.reuse, tuple(args.override)))
    table = summarise(rows)
    print(f"{'metric':44s} {'without':>16s} {args.label:>16s} {'delta':>8s}")
    for key in table["without"]:
        (a, sa), (b, sb) = table["without"][key], table[args.label][key]
        print(f"{key:44s} {a:9.3f} ± {sa:.3f} {b:9.3f} ± {sb:.3f} {b - a:+8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows,
                                    "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
