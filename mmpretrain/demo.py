"""What the demo must reach on held-out data, checked after every `mmpretrain demo` run."""

from __future__ import annotations

# Chance is 0.10 for digits, 1/6 for colour and 1/4 for shape; these are the acceptance bars.
DEMO_TARGETS: dict[str, float] = {
    "zeroshot/digits/top1": 0.90,
    "zeroshot/shapes-colour/top1": 0.80,
    "zeroshot/shapes-shape/top1": 0.80,
}


def check_targets(results: dict[str, float], targets: dict[str, float] = DEMO_TARGETS) -> list[str]:
    """Print each target as met or missed; return the keys that were missed (or absent)."""
    missed = []
    for key, bar in targets.items():
        value = results.get(key)
        ok = value is not None and value >= bar
        shown = "absent" if value is None else f"{value:.3f}"
        print(f"  {'ok    ' if ok else 'MISSED'} {key} = {shown} (target >= {bar:.2f})")
        if not ok:
            missed.append(key)
    return missed
