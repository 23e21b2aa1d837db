"""`build_report`: read the inputs, draw, render, and put the finished folder in place in one rename.

Not engine/export.write_dir_atomically: that module imports torch and open_clip (seconds, for a page of plots), and
its mode fix covers a flat folder only, where the report has assets/ and assets/thumbs/ inside."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from mmpretrain.report.inputs import Input, RunInput, read_input

PAGE = "index.html"
DEFAULT_OUT = "report"     # --out's default: <first input>/report


def default_out(inputs: Sequence[Path]) -> Path:
    """The report of a run or a benchmark lives in it, as `mmpretrain eval` puts eval_results.json beside the run."""
    return inputs[0] / DEFAULT_OUT


def default_title(inputs: Sequence[Input]) -> str:
    names = [item.name if isinstance(item, RunInput) else item.path.resolve().name for item in inputs]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"mmpretrain report: {shown}"


def _is_replaceable(out: Path) -> bool:
    """Only an empty folder or an earlier report may be replaced: `--out RUN_DIR --overwrite` by mistake must not
    delete a run."""
    if not out.is_dir() or out.is_symlink():
        return False
    entries = {entry.name for entry in out.iterdir()}
    return not entries or (PAGE in entries and entries <= {PAGE, "assets"})


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output that exists (FileExistsError, one line) before any work: unless `overwrite`, and even then
    anything that is not an empty folder or an earlier report."""
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace the report in it")
    if not _is_replaceable(out):
        raise FileExistsError(f"{out} exists and is not a report folder (only {PAGE} and assets/): not replacing "
                              f"it, even with --overwrite")


def _apply_umask(folder: Path) -> None:
    """mkdtemp makes its folder 0700: give the report the modes any other output gets (0777/0666 less the umask),
    so a report on shared storage can be read by the group."""
    mask = os.umask(0)
    os.umask(mask)
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def write_atomically(out: Path, fill: Callable[[Path], None], overwrite: bool) -> None:
    """`fill(tmp)` a temporary folder beside `out` (same file system, so the rename is atomic), then rename it to
    `out`: a reader sees the old report or the new one, never half of one; a failure leaves `out` as it was and no
    temporary folder behind. An old report is moved aside first (a folder cannot be renamed onto a non-empty one)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    aside: Optional[Path] = None
    try:
        fill(tmp)
        _apply_umask(tmp)
        check_out(out, overwrite)  # again: another process may have written `out` while we drew
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, aside / out.name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and (aside / out.name).exists() and not out.exists():
            os.replace(aside / out.name, out)  # the old report back in its place
        if aside is not None and not (aside / out.name).exists():
            aside.rmdir()
        raise
    if aside is not None:
        shutil.rmtree(aside)


def build_report(inputs: Sequence[Path], out: Optional[Path] = None, *, title: Optional[str] = None,
                 overwrite: bool = False) -> Path:
    """Write the report of `inputs` (run and/or benchmark directories) to `out` (default <first input>/report) and
    return its index.html. Raises FileNotFoundError / ConfigError for an input that is not one, FileExistsError for
    an output that may not be replaced; all before anything is drawn."""
    from mmpretrain.report import page  # matplotlib and jinja2: only once there is something to draw

    if not inputs:
        raise ValueError("build_report needs at least one input")
    out = out if out is not None else default_out(inputs)
    check_out(out, overwrite)
    read = [read_input(Path(path)) for path in inputs]
    heading = title or default_title(read)

    def fill(folder: Path) -> None:
        parts = page.sections(read, folder)
        (folder / PAGE).write_text(page.render(heading, parts), encoding="utf-8")

    write_atomically(out, fill, overwrite)
    return out / PAGE
