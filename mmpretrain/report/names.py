"""File names for labels: the one rule the benchmark writer and the report share to find a model's details folder."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# Most file systems cap a name at 255 bytes; model specs (hf-hub:org/name, paths to checkpoints) can be longer.
_MAX_LEN = 120


def safe_name(label: str) -> str:
    """`label` as one file or folder name: every character outside [A-Za-z0-9._-] becomes "_".

    Also, so the result is always a plain name inside its parent folder: a leading "." becomes "_" (no hidden
    names, no "." or ".."), an empty label is "_", and a name longer than 120 characters is cut to 107 plus "-"
    and 12 hex digits of the label's SHA-1 (two long labels sharing a prefix stay apart).
    Short labels made of safe characters are unchanged: safe_name("ViT-B-32_openai") == "ViT-B-32_openai";
    safe_name("hf-hub:timm/ViT-B-16") == "hf-hub_timm_ViT-B-16". Distinct labels can meet ("a:b", "a/b"): the report
    says so when two of a benchmark's models do."""
    name = _UNSAFE.sub("_", label)
    if name.startswith("."):
        name = "_" + name[1:]
    if not name:
        name = "_"
    if len(name) > _MAX_LEN:
        digest = hashlib.sha1(label.encode("utf-8")).hexdigest()[:12]
        name = f"{name[:_MAX_LEN - 13]}-{digest}"
    return name
