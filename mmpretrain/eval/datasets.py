"""Load an eval set into memory: from WebDataset shards or from a plain folder of files.

Image zero-shot sets and image-text retrieval shards are streamed instead (eval/sources.py, eval/stream.py: read
in workers, only features kept). What is read here, into lists batched by the harness, are the sets that stream
does not cover yet: audio, class-level retrieval and retrieval folders. What a
sample holds of each modality (an image, captions, an audio clip) is decoded by that modality's `Modality`
(eval/modalities.py); this module only finds the samples, their labels and their members.

- Zero-shot sets carry a label per item of one modality (image by default, or audio).
- Retrieval sets carry two modalities per sample (image and text by default; text is one or more captions).
  With a `match_key`, a sample also carries a label (a `.json` field or a member), and may hold either
  modality or both: class-level retrieval matches items by label, not by sample.

- Shards: read by training's reader (data/safe_tar.py): local files, declared members only, none over the member
  size cap. Labels come from ``meta[label_key]`` (an int class index or a class name), or from a raw member of
  that name (clip_benchmark's ``<key>.cls`` layout); captions come from ``<key>.txt``.
- Folders: zero-shot reads ``root/<classname>/<file>`` (image or audio files); retrieval reads the files of
  ``root/**`` grouped by stem, e.g. ``<stem>.png`` with its captions in ``<stem>.txt`` (one per line), or
  ``<stem>.flac`` with ``<stem>.txt``, and ``<stem>.json`` for a match_key.

A bad sample (unreadable image or audio, missing or unknown label, bad caption, oversized member) or a broken
shard is a counted skip with a reason from data/skips.py, kept in the set's `skips` ledger: one bad image in ten
thousand should cost one sample, not the evaluation. The harness reports the count and fails a set with nothing
usable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

from mmpretrain.data.safe_tar import DEFAULT_MAX_MEMBER_BYTES, ShardFailure, read_shard
from mmpretrain.data.shards import RawSample, expand_shards, read_shard_sizes
from mmpretrain.data.skips import SampleSkipped, SkipEvent, SkipLedger
from mmpretrain.eval.modalities import EvalInputs, ImageModality, Modality, TextModality

Item = TypeVar("Item")


@dataclass
class ZeroShotData:
    """Items of one modality with integer labels indexing `classnames`, and what was skipped on the way."""

    items: list[Any]
    labels: list[int]
    classnames: list[str]
    skips: SkipLedger = field(default_factory=SkipLedger)
    modality: str = "image"

    @property
    def images(self) -> list[Any]:
        return self.items


@dataclass
class RetrievalData:
    """Per modality, the decoded items (text: a sample's list of captions) and the sample each came from; per
    sample, its match_key label (class-level retrieval only); and what was skipped on the way.

    Without a match_key every sample holds both modalities, so `samples[m]` is 0, 1, 2, ... for both."""

    items: dict[str, list[Any]]
    samples: dict[str, list[int]]
    labels: list[str] = field(default_factory=list)
    skips: SkipLedger = field(default_factory=SkipLedger)

    @property
    def images(self) -> list[Any]:
        return self.items.get("image", [])

    @property
    def captions(self) -> list[list[str]]:
        return self.items.get("text", [])


def is_folder(data: str) -> bool:
    """A directory holding no ``*.tar`` files is read as a folder of files; anything else as a shard spec."""
    path = Path(data)
    return path.is_dir() and not any(path.glob("*.tar"))


is_image_folder = is_folder  # the name from before eval read audio


def _collect(attempts: Iterable[Union[Item, SkipEvent]], max_samples: int | None
             ) -> tuple[list[Item], SkipLedger]:
    """The usable items of `attempts` (the first `max_samples` of them) and a ledger of the skips among them.

    Reading stops at the last item taken: `attempts` is lazy, so nothing after it is read or decoded.
    """
    usable: list[Item] = []
    skips = SkipLedger()
    for attempt in attempts:
        if isinstance(attempt, SkipEvent):
            skips.record(0, [attempt])
            continue
        usable.append(attempt)
        if len(usable) == max_samples:
            break
    skips.record(len(usable), [])
    return usable, skips


def shard_attempts(shard: str, members: Collection[str], parse: Callable[[RawSample], Item],
                   max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES, expected: Optional[int] = None
                   ) -> Iterator[Union[Item, SkipEvent]]:
    """Each sample of one shard parsed, or the SkipEvent of a sample `parse` refused or of the shard breaking
    (`expected`, from sizes.json, says how many it lost). The streamed readers (eval/sources.py) read a shard at
    a time through this too."""
    for item in read_shard(shard, members, expected=expected, max_member_bytes=max_member_bytes):
        if isinstance(item, ShardFailure):
            yield SkipEvent(item.reason, item.shard, item.lost, f"{item.shard}: {item.detail}")
            continue
        key = str(item.get("__key__", "?"))
        try:
            parsed = parse(item)
        except SampleSkipped as e:
            yield SkipEvent(e.reason, shard, 1, f"{key} in {shard}: {e.detail}", key)
        else:
            yield parsed


def _shard_attempts(spec: str, members: Collection[str], parse: Callable[[RawSample], Item],
                    max_member_bytes: int) -> Iterator[Union[Item, SkipEvent]]:
    """`shard_attempts` over every shard of a shard spec."""
    shards = expand_shards(spec)
    sizes = read_shard_sizes(shards) or {}
    for shard in shards:
        yield from shard_attempts(shard, members, parse, max_member_bytes, sizes.get(shard))


def resolve_label(value: Any, classnames: Sequence[str], label_key: str) -> int:
    """Map a label (class index, or class name looked up in `classnames`) to a class index.

    Raises SampleSkipped("label_invalid") for an index out of range or a name that is not a class.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if classnames and not 0 <= value < len(classnames):
            raise SampleSkipped("label_invalid", f"label {label_key}={value} is out of range for "
                                f"{len(classnames)} classes")
        return value
    if isinstance(value, str) and value in classnames:
        return list(classnames).index(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return resolve_label(int(value.strip()), classnames, label_key)
    raise SampleSkipped("label_invalid", f"label {label_key}={value!r} is neither a class index nor one of the "
                        f"class names {list(classnames)}")


def _raw_label(raw: RawSample, label_key: str) -> Any:
    """The label of a raw sample: ``meta[label_key]`` from its JSON, else a raw member named `label_key`."""
    if raw.get("json") is not None:
        try:
            meta = json.loads(raw["json"].decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise SampleSkipped("label_invalid", f".json is not readable JSON: {e}") from None
        if isinstance(meta, dict) and label_key in meta:
            return meta[label_key]
    member = raw.get(label_key.lower())  # the reader lower-cases member extensions
    if member is not None:
        try:
            return member.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise SampleSkipped("label_invalid", f".{label_key} is not UTF-8: {e}") from None
    raise SampleSkipped("label_invalid", f"no label: no {label_key!r} field in its .json and no .{label_key} member")


def _default(modality: Optional[Modality]) -> Modality:
    return modality if modality is not None else ImageModality(EvalInputs())


def _default_pair(between: Optional[Sequence[Modality]]) -> tuple[Modality, Modality]:
    if between is None:
        return ImageModality(EvalInputs()), TextModality(EvalInputs())
    first, second = between
    return first, second


def _oversized(raw: RawSample) -> None:
    if raw.get("__oversized__"):
        raise SampleSkipped("member_too_large", raw["__oversized__"])


def _labelled_item(raw: RawSample, classnames: Sequence[str], label_key: str, modality: Modality) -> tuple[Any, int]:
    """A zero-shot sample's decoded item and class index; the label is checked first, as it costs no decoding."""
    _oversized(raw)
    label = resolve_label(_raw_label(raw, label_key), classnames, label_key)
    return modality.decode(raw), label


def load_zeroshot_shards(spec: str, classnames: Sequence[str], label_key: str = "label",
                         max_samples: int | None = None, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                         modality: Optional[Modality] = None) -> ZeroShotData:
    """Read labelled items of `modality` (default: images) from shards; no .txt caption is needed."""
    modality = _default(modality)
    # The label member (clip_benchmark's .cls) is declared too; if label_key names a .json field instead, no
    # member of that name exists and declaring it costs nothing.
    members = frozenset(modality.extensions + ("json", label_key.lower()))
    attempts = _shard_attempts(spec, members, lambda raw: _labelled_item(raw, classnames, label_key, modality),
                               max_member_bytes)
    pairs, skips = _collect(attempts, max_samples)
    return ZeroShotData(items=[item for item, _ in pairs], labels=[label for _, label in pairs],
                        classnames=list(classnames), skips=skips, modality=modality.name)


def _match_label(raw: RawSample, match_key: str) -> str:
    """A sample's match_key value as text (so 3 and "3" match); a missing or non-scalar one is label_invalid."""
    value = _raw_label(raw, match_key)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise SampleSkipped("label_invalid", f"{match_key}={value!r} is not a class name or index")
    return str(value).strip()


def _retrieval_sample(raw: RawSample, between: tuple[Modality, Modality], match_key: Optional[str]
                      ) -> tuple[dict[str, Any], Optional[str]]:
    """A retrieval sample's decoded members by modality, and its match_key label.

    Without a match_key both members are needed (the first missing or bad one is the skip reason). With one, the
    label is read first and the sample may hold either member or both; one it holds must still decode."""
    _oversized(raw)
    if match_key is None:
        return {m.name: m.decode(raw) for m in between}, None
    label = _match_label(raw, match_key)
    present = [m for m in between if m.present(raw)] or [between[0]]  # neither: the first one's missing reason
    return {m.name: m.decode(raw) for m in present}, label


def _retrieval_data(parsed: list[tuple[dict[str, Any], Optional[str]]], between: tuple[Modality, Modality],
                    skips: SkipLedger, match_key: Optional[str]) -> RetrievalData:
    items: dict[str, list[Any]] = {m.name: [] for m in between}
    samples: dict[str, list[int]] = {m.name: [] for m in between}
    for index, (members, _) in enumerate(parsed):
        for name, item in members.items():
            items[name].append(item)
            samples[name].append(index)
    labels = [label for _, label in parsed] if match_key is not None else []
    return RetrievalData(items=items, samples=samples, labels=labels, skips=skips)  # type: ignore[arg-type]


def _retrieval_members(between: tuple[Modality, Modality], match_key: Optional[str]) -> frozenset[str]:
    # Without a match_key no .json: nothing of it is used, and an unread member cannot fail to parse.
    label_members = ("json", match_key.lower()) if match_key is not None else ()
    return frozenset(between[0].extensions + between[1].extensions + label_members)


def load_retrieval_shards(spec: str, max_samples: int | None = None,
                          max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                          between: Optional[Sequence[Modality]] = None, match_key: Optional[str] = None
                          ) -> RetrievalData:
    """Read the two modalities of `between` (default: images and all of their captions) from shards."""
    pair = _default_pair(between)
    attempts = _shard_attempts(spec, _retrieval_members(pair, match_key),
                               lambda raw: _retrieval_sample(raw, pair, match_key), max_member_bytes)
    parsed, skips = _collect(attempts, max_samples)
    return _retrieval_data(parsed, pair, skips, match_key)


def _file_attempts(root: str, paths: Iterable[Path], parse: Callable[[Path], Item]
                   ) -> Iterator[Union[Item, SkipEvent]]:
    """Each file (or group of files, named by its first) parsed, or the SkipEvent of one `parse` refused
    (counted against `root`)."""
    for path in paths:
        try:
            parsed = parse(path)
        except SampleSkipped as e:
            yield SkipEvent(e.reason, root, 1, f"{path}: {e.detail}", str(path))
        else:
            yield parsed


def _files(folder: Path, extensions: Collection[str]) -> list[Path]:
    suffixes = {f".{ext}" for ext in extensions}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _read_file(path: Path) -> RawSample:
    """A file as a one-member raw sample, keyed by its lower-cased extension as the shard reader keys members."""
    return {"__key__": str(path), path.suffix.lower().lstrip("."): path.read_bytes()}


def load_zeroshot_folder(root: str, classnames: Sequence[str] = (), max_samples: int | None = None,
                         modality: Optional[Modality] = None) -> ZeroShotData:
    """Read ``root/<classname>/<file>`` of `modality` (default: images); labels index `classnames`, or the sorted
    folder names if none given."""
    modality = _default(modality)
    folders = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    names = list(classnames) or folders
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise ValueError(f"{root}: class folders {unknown} are not among the class names {names}")
    label_of = {path: names.index(folder) for folder in folders
                for path in _files(Path(root) / folder, modality.extensions)}
    pairs, skips = _collect(_file_attempts(root, label_of,
                                           lambda path: (modality.decode(_read_file(path)), label_of[path])),
                            max_samples)
    return ZeroShotData(items=[item for item, _ in pairs], labels=[label for _, label in pairs],
                        classnames=names, skips=skips, modality=modality.name)


def _stem_groups(root: Path, members: Collection[str], anchors: Collection[str]) -> dict[Path, dict[str, Path]]:
    """The files under `root` with a declared extension, grouped by path without extension; only groups holding
    an `anchors` file count as samples (text alone is not a sample, as before audio)."""
    groups: dict[Path, dict[str, Path]] = {}
    for path in _files(root, members):
        groups.setdefault(path.with_suffix(""), {}).setdefault(path.suffix.lower().lstrip("."), path)
    return {stem: files for stem, files in sorted(groups.items()) if any(ext in anchors for ext in files)}


def load_retrieval_folder(root: str, max_samples: int | None = None, between: Optional[Sequence[Modality]] = None,
                          match_key: Optional[str] = None) -> RetrievalData:
    """Read the files under `root` grouped by stem: every image (or the files of `between`'s non-text modalities)
    with its same-stem members, e.g. the ``.txt`` captions (one per line)."""
    pair = _default_pair(between)
    anchors = [ext for m in pair if m.name != "text" for ext in m.extensions]
    groups = _stem_groups(Path(root), _retrieval_members(pair, match_key), anchors)
    first_file = {min(files.values()): files for files in groups.values()}

    def parse(path: Path) -> tuple[dict[str, Any], Optional[str]]:
        raw: RawSample = {"__key__": str(path), **{ext: p.read_bytes() for ext, p in first_file[path].items()}}
        return _retrieval_sample(raw, pair, match_key)

    parsed, skips = _collect(_file_attempts(root, first_file, parse), max_samples)
    return _retrieval_data(parsed, pair, skips, match_key)


def load_zeroshot(data: str, classnames: Sequence[str] = (), label_key: str = "label",
                  max_samples: int | None = None, modality: Optional[Modality] = None) -> ZeroShotData:
    """Zero-shot set from a folder or a shard spec (shards need `classnames` to name their labels)."""
    if is_folder(data):
        return load_zeroshot_folder(data, classnames, max_samples, modality)
    return load_zeroshot_shards(data, classnames, label_key, max_samples, modality=modality)


def load_retrieval(data: str, max_samples: int | None = None, between: Optional[Sequence[Modality]] = None,
                   match_key: Optional[str] = None) -> RetrievalData:
    """Retrieval set from a folder or a shard spec."""
    if is_folder(data):
        return load_retrieval_folder(data, max_samples, between, match_key)
    return load_retrieval_shards(data, max_samples, between=between, match_key=match_key)
