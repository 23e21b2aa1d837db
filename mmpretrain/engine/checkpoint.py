"""Checkpoints: one owner for the directory, the names, keep-K, atomic writes and the registered state.

A checkpoint of step N is `checkpoints/step-NNNNNNNNN.pt`, written by rank 0, atomically (a temp file renamed
into place), holding `{"format", "step", <metadata>, <part name>: <part state>, ...}` for every registered
stateful part (engine, train loader, anything later such as an EMA). A part registered `per_rank` contributes
every rank's state, in rank order (the train loader: each rank reads its own shards). An engine with per-rank
state of its own (DeepSpeed's optimizer partitions) writes it into `checkpoints/step-NNNNNNNNN/` first; the
`.pt` file is written after them, and last `checkpoints/step-NNNNNNNNN.manifest.json` (size and sha256 of the
`.pt` and of every file in the step folder), so the manifest marks a complete checkpoint. `latest` is the newest
checkpoint that verifies against its manifest (one without a manifest, from before manifests, only if it loads);
the ones skipped on the way are named in one warning line. Keep-K prunes only after the new manifest is written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import torch

from mmpretrain.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2  # 1: before the Checkpointer (engine state at the top level, replayed data positions)
MANIFEST_FORMAT = 1
_CHECKPOINT = re.compile(r"^step-(\d{9})\.pt$")
_HASH_CHUNK = 1 << 20


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Any) -> None: ...


def step_name(step: int) -> str:
    """The one place a checkpoint's name is made: `step-000001000`."""
    return f"step-{step:09d}"


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"{step_name(step)}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Temp files from an interrupted save never match the pattern."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def manifest_path(checkpoint: Path) -> Path:
    """`step-N.pt` -> `step-N.manifest.json`, written last: its presence marks a complete checkpoint."""
    return checkpoint.with_name(checkpoint.name[:-len(".pt")] + ".manifest.json")


def file_digest(path: Path) -> dict[str, Any]:
    """Size and sha256 of one file (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def shard_files(checkpoint: Path) -> list[str]:
    """The files of a checkpoint's step folder, relative to the checkpoints directory, sorted (the universal
    conversion, made later at resume, is not part of the checkpoint)."""
    folder = checkpoint.with_suffix("")
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(checkpoint.parent)) for p in folder.rglob("*")
                  if p.is_file() and not p.relative_to(folder).parts[0].startswith("universal"))


def verify_checkpoint(path: Path) -> Optional[str]:
    """None when `path` is a complete checkpoint, else why not (one phrase). With a manifest: every file it
    lists is there with its size and sha256. Without (written before manifests): the `.pt` must load."""
    if not path.is_file():
        return "missing"
    manifest = manifest_path(path)
    if not manifest.is_file():
        try:
            load_checkpoint(path)
        except Exception as e:  # a truncated zip, a zero-byte file: anything that does not load
            first = str(e).splitlines()[0] if str(e) else ""
            return f"no manifest and it does not load ({type(e).__name__}: {first})"
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest {manifest.name} ({type(e).__name__})"
    for name, expected in files.items():
        target = path.parent / name
        if not target.is_file():
            return f"{name} missing"
        size = target.stat().st_size
        if size != expected["size"]:
            return f"{name} is {size} bytes, the manifest says {expected['size']}"
        if file_digest(target)["sha256"] != expected["sha256"]:
            return f"{name} does not match its sha256"
    return None


def _newest_valid(directory: Path, checkpoints: list[Path]) -> Optional[Path]:
    """The newest checkpoint that verifies; the skipped ones in one warning line. ConfigError when there are
    checkpoints but none verifies (starting over would silently lose the run)."""
    skipped = []
    for path in reversed(checkpoints):
        reason = verify_checkpoint(path)
        if reason is None:
            if skipped:
                log.warning("skipped incomplete checkpoint(s) in %s: %s; resuming from %s", directory,
                            "; ".join(skipped), path.name)
            return path
        skipped.append(f"{path.name} ({reason})")
    if skipped:
        raise ConfigError(f"no intact checkpoint in {directory}: {'; '.join(skipped)}")
    return None


def resolve_resume(directory: Path, resume: str) -> Optional[Path]:
    """`latest` -> newest intact checkpoint in `directory` (None if there is none yet); otherwise a checkpoint
    file, a DeepSpeed step folder (its `.pt` beside it), a run directory or a checkpoints folder (their newest
    intact one). A file named explicitly that does not verify is a ConfigError naming it."""
    if resume == "latest":
        return _newest_valid(directory, list_checkpoints(directory))
    path = Path(resume)
    if path.is_dir() and path.with_name(path.name + ".pt").is_file():
        path = path.with_name(path.name + ".pt")
    elif path.is_dir():
        folder = path if path.name == "checkpoints" else path / "checkpoints"
        checkpoints = list_checkpoints(folder)
        if not checkpoints:
            raise FileNotFoundError(f"no checkpoints in {path}")
        return _newest_valid(folder, checkpoints)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {resume!r} not found")
    reason = verify_checkpoint(path)
    if reason is not None:
        raise ConfigError(f"checkpoint {path} is corrupt or incomplete: {reason}")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: a checkpoint is data; loading it must not run code. mmap: every rank of a DeepSpeed run reads
    # the consolidated file, and only the parts it uses should be paged in.
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def model_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model's state dict from a checkpoint of either format."""
    if "engine" in checkpoint and "model" in checkpoint["engine"]:
        return checkpoint["engine"]["model"]
    if "model" in checkpoint:
        return checkpoint["model"]
    raise KeyError("not a training checkpoint (no model state dict)")


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` beside `path`, then renamed into place: `path` is old or whole, and no partial file stays."""
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)  # atomic on POSIX
    except BaseException:
        tmp.unlink(missing_ok=True)  # no partial file is left behind, whatever stopped the write
        raise


def atomic_save(state: Mapping[str, Any], path: Path) -> None:
    """Write `state` to `path` so a reader sees the old file set or the complete new file, never a part."""
    write_atomically(path, lambda tmp: torch.save(dict(state), tmp))


def write_manifest(checkpoint: Path, step: int, digests: Mapping[str, Mapping[str, Any]]) -> Path:
    """The manifest of `checkpoint` (atomically): `digests` maps names relative to its directory to
    {size, sha256}; the `.pt`'s own entry is added here."""
    files = {checkpoint.name: file_digest(checkpoint), **digests}
    text = json.dumps({"format": MANIFEST_FORMAT, "step": step, "files": files}, indent=1, sort_keys=True)
    manifest = manifest_path(checkpoint)
    write_atomically(manifest, lambda tmp: tmp.write_text(text))
    return manifest


def storage_error(error: OSError, path: Path) -> str:
    """One line for a failed checkpoint write: ENOSPC (or the errno's name), the path, what is kept."""
    name = errno.errorcode.get(error.errno, "") if error.errno else ""
    what = "no space left on device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    return (f"cannot write checkpoint {path}: {name + ' ' if name else ''}({what}); the older checkpoints are "
            "kept, free space and resume with --resume latest")


@dataclass
class _Part:
    part: Stateful
    per_rank: bool
    sharded: bool
    optional: bool = False


def _gather_one(value: Any) -> list[Any]:
    return [value]


def _identity(value: Any) -> Any:
    return value


class Checkpointer:
    """Saves and restores the registered parts under `directory` (see module doc).

    `gather` collects an object from every rank (rank order), `barrier` waits for all and `broadcast` hands
    rank 0's object to every rank; all are collectives given by the composition root, so every rank must call
    `save` / `restore` at the same step. Rank 0 decides which checkpoint `restore` loads, and whether a save
    failed, and every rank follows.
    """

    def __init__(self, directory: Path, keep: int, is_main: bool = True,
                 gather: Callable[[Any], list[Any]] = _gather_one, barrier: Callable[[], None] = lambda: None,
                 metadata: Optional[Mapping[str, Any]] = None,
                 broadcast: Callable[[Any], Any] = _identity) -> None:
        if keep < 1:
            raise ConfigError(f"train.keep_checkpoints must be >= 1, got {keep}")
        self.directory = directory
        self.keep = keep
        self.is_main = is_main
        self._gather = gather
        self._barrier = barrier
        self._broadcast = broadcast
        self.metadata = dict(metadata or {})
        self._parts: dict[str, _Part] = {}
        self.last_saved: Optional[int] = None  # the step saved or restored last

    def register(self, name: str, part: Stateful, *, per_rank: bool = False, sharded: bool = False,
                 optional: bool = False) -> None:
        """Add a stateful part. `per_rank`: every rank's state is kept (in rank order) and handed back whole;
        `sharded`: the part also writes per-rank files (`save_shards(folder)` / `load_shards(folder)`);
        `optional`: a checkpoint written before the part existed still restores (the part keeps its own state),
        so adding a part does not strand the runs already on disk."""
        if name in self._parts or name in ("format", "step", *self.metadata):
            raise ValueError(f"checkpoint part name {name!r} is taken")
        self._parts[name] = _Part(part, per_rank, sharded, optional)

    def save(self, step: int) -> Path:
        """Write step `step` (every rank calls this): shards, `.pt`, manifest; then keep only the newest `keep`.

        A failed write (a full disk: ENOSPC) on any rank removes this step's files, leaves the older checkpoints
        as they were and raises `StorageError` on every rank, naming the errno and the path."""
        path = checkpoint_path(self.directory, step)
        if self.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_step(step)  # saving a step again: no stale per-rank file or manifest may remain
        self._barrier()
        failure: Optional[str] = None
        try:
            for entry in self._parts.values():
                if entry.sharded:
                    entry.part.save_shards(self.directory / step_name(step))  # type: ignore[attr-defined]
        except OSError as e:
            failure = storage_error(e, Path(e.filename) if e.filename else self.directory / step_name(step))
        failures = [f for f in self._gather(failure) if f]  # also: every rank's shards are written
        if failures:
            self._fail(step, failures[0])
        states = {name: self._gather(e.part.state_dict()) if e.per_rank else e.part.state_dict()
                  for name, e in self._parts.items()}
        failure = None
        if self.is_main:
            try:
                atomic_save({"format": CHECKPOINT_FORMAT, "step": step, **self.metadata, **states}, path)
                # Every rank's shards are written (the gather above waited for them): read back and hashed.
                shards = {name: file_digest(self.directory / name) for name in shard_files(path)}
                write_manifest(path, step, shards)
            except OSError as e:
                failure = storage_error(e, path)
            else:
                self._prune()  # only now: the new checkpoint is complete and its manifest written
        failure = self._broadcast(failure)  # also the end of the save for every rank
        if failure:
            self._fail(step, failure)
        self.last_saved = step
        return path

    def _fail(self, step: int, message: str) -> None:
        """Every rank: remove this step's files (rank 0) and raise the one-line StorageError."""
        if self.is_main:
            try:
                self._remove_step(step)
            except OSError:
                pass
        raise StorageError(message)

    def _remove_step(self, step: int) -> None:
        path = checkpoint_path(self.directory, step)
        manifest_path(path).unlink(missing_ok=True)  # first: without it the checkpoint is not complete
        path.unlink(missing_ok=True)
        shutil.rmtree(self.directory / step_name(step), ignore_errors=True)

    def restore(self, resume: str) -> Optional[tuple[Path, int]]:
        """Load the checkpoint `resume` names into every part; (path, step), or None when `latest` finds none.
        Rank 0 resolves and verifies it (falling back past incomplete ones) and every rank loads that one."""
        outcome: Any = None
        if self.is_main:
            try:
                found_path = resolve_resume(self.directory, resume)
                outcome = ("path", None if found_path is None else str(found_path))
            except (ConfigError, FileNotFoundError) as e:
                outcome = (type(e).__name__, str(e))
        kind, value = self._broadcast(outcome)
        if kind != "path":
            raise (FileNotFoundError if kind == "FileNotFoundError" else ConfigError)(value)
        if value is None:
            return None
        path = Path(value)
        state = load_checkpoint(path)
        found = state.get("format", 1)
        if found != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path} was written in checkpoint format {found}, this version resumes format "
                              f"{CHECKPOINT_FORMAT}: resume it with the version that wrote it, or evaluate and "
                              "export it (both still read it)")
        missing = [name for name, entry in self._parts.items() if name not in state and not entry.optional]
        if missing:
            raise ConfigError(f"{path} holds no state for {missing}")
        for name, entry in self._parts.items():
            if name not in state:
                continue  # an optional part the checkpoint predates
            entry.part.load_state_dict(state[name])
            if entry.sharded:
                entry.part.load_shards(path.with_suffix(""))  # type: ignore[attr-defined]
        self.last_saved = int(state["step"])
        return path, self.last_saved

    def _prune(self) -> None:
        """Delete all but the newest `keep` checkpoints, with their manifests and shard folders, and shard folders
        or manifests left without a checkpoint by an interrupted save before the newest one. Called only after
        the newest checkpoint's manifest is written, so the last good checkpoint outlives its successor's save."""
        complete = list_checkpoints(self.directory)
        for old in complete[:-self.keep]:
            manifest_path(old).unlink(missing_ok=True)  # first: a checkpoint without its manifest is not taken
            old.unlink(missing_ok=True)
            shutil.rmtree(old.with_suffix(""), ignore_errors=True)
        if not complete:
            return
        newest = complete[-1].with_suffix("").name
        for leftover in self.directory.iterdir():
            name = leftover.name.removesuffix(".manifest.json")
            if (re.fullmatch(r"step-\d{9}", name) and name < newest
                    and not leftover.with_name(name + ".pt").exists()):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
