"""Shipped class-name lists for standard zero-shot sets, one name per line in the dataset's own label order.

They exist where a dataset's own names are not usable in a prompt ("aquarium_fish", "0 - zero", ISO country codes,
WordNet synonym tuples) or where the dataset carries none (GTSRB, SVHN, FER2013). README.md here says where each
list comes from. `load_classnames("cifar100")` reads a shipped list; any other value is read as a file path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mmpretrain.eval.sources import read_lines
from mmpretrain.errors import ConfigError


def shipped_classnames() -> list[str]:
    """The names of the shipped lists (file stems), sorted."""
    return sorted(entry.name[:-4] for entry in resources.files(__name__).iterdir() if entry.name.endswith(".txt"))


def load_classnames(name_or_path: str) -> list[str]:
    """A shipped list by name (``cifar100``), else the stripped non-empty lines of the file at that path."""
    name = str(name_or_path)
    if name in shipped_classnames():
        text = resources.files(__name__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
        return [line.strip() for line in text.splitlines() if line.strip()]
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"class names {name!r}: neither a shipped list ({', '.join(shipped_classnames())}) "
                                f"nor a file")
    names = read_lines(path)
    if not names:
        raise ConfigError(f"class names file {path} has no names (one per line)")
    return names
