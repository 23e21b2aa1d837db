"""Reading shards that strangers wrote: plain files only, declared members only, failures as values.

webdataset opens a URL through `gopen`, which runs `pipe:` URLs in a shell and http(s)/s3/gs URLs through
curl or gsutil subprocesses: a shard list would be a list of commands. So a shard here is a local file opened
with `open()`, and any URL is refused unless `data.allow_shell_urls` says otherwise. Within a shard only the
members a sample needs are read (a `.pth` or `.pyd` member is passed over unread, never decoded or unpickled),
none over a size cap, and a shard that cannot be opened or breaks partway becomes a `ShardFailure` in the stream
instead of an exception, so the samples it did hold are used and the loss is counted.

A tool that copies samples whole (`mmpretrain negatives write` adds a member to each) passes `EVERY_MEMBER`:
every member is then read as bytes, still under the size cap, and still never decoded here.
"""

from __future__ import annotations

import collections
import re
import tarfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Optional, Union

import webdataset as wds
from webdataset.tariterators import base_plus_ext, group_by_keys

from mmpretrain.data.skips import SampleLimits
from mmpretrain.data.shards import RawSample
from mmpretrain.errors import ConfigError

# `pipe:cmd`, `http://`, `s3://`, `gs://`, `file:`...: a scheme of two or more letters (so `C:\` stays a path).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


DEFAULT_MAX_MEMBER_BYTES = SampleLimits().max_member_bytes
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's own metadata members (`__index__`...), never samples


class _EveryMember(Collection[str]):
    """A `members` argument that contains every extension: for copying samples whole, as bytes."""

    def __contains__(self, extension: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


EVERY_MEMBER: Collection[str] = _EveryMember()


@dataclass(frozen=True)
class Oversized:
    """Stands in for a declared member over the size cap: its bytes were skipped, never held in memory."""

    size: int


@dataclass(frozen=True)
class ShardFailure:
    """A shard that could not be read (to the end): `lost` samples of it never arrive."""

    shard: str
    reason: str  # "shard_unreadable" (nothing read) or "shard_truncated" (broke partway)
    detail: str
    lost: int


def is_url(spec: str) -> bool:
    return bool(_URL.match(spec))


def check_shard_spec(spec: str, allow_shell_urls: bool) -> None:
    """Refuse URLs (which webdataset would hand to a shell or curl) unless explicitly allowed."""
    if is_url(spec) and not allow_shell_urls:
        raise ConfigError(f"data: refusing shard URL {spec!r}: webdataset opens pipe: and remote URLs by running "
                          "a shell command or curl. Use local paths, or set data.allow_shell_urls=true if you "
                          "trust every shard spec in this config")


def _open(shard: str, allow_shell_urls: bool):
    if is_url(shard):
        check_shard_spec(shard, allow_shell_urls)  # again here: the reader must never trust its caller
        return wds.gopen(shard, "rb")
    return open(shard, "rb")


def _is_compressed(stream: IO[bytes]) -> bool:
    """gzip, bzip2 or xz magic at the start: such a tar cannot be entered at a byte offset."""
    head = stream.read(6)
    stream.seek(0)
    return head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head == b"\xfd7zXZ\x00"


def _tar_members(stream: IO[bytes], shard: str, members: Collection[str], max_bytes: int, base: int = 0,
                 one_sample: bool = False) -> Iterator[dict]:
    """The regular files of a tar stream as webdataset's grouping takes them (`fname`, `data`, `__url__`), each
    with `offset`: where its header starts in the (uncompressed) tar, `base` being where the stream was entered.

    The size in a member's header is checked before its data is read: undeclared members and declared ones over
    `max_bytes` are passed over in the stream (read in small blocks and dropped), so a shard cannot make a
    worker hold a multi-gigabyte member. `one_sample`: stop at the first header of another sample, unread.
    """
    first_key = None
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if not info.isreg() or _META.match(info.name):
                continue
            key, extension = base_plus_ext(info.name)
            if one_sample and first_key is not None and key != first_key:
                return
            first_key = first_key or key
            extension = (extension or "").lower()
            if extension not in members:
                data: object = b""  # named (so the sample is still seen and counted), never read
            elif info.size > max_bytes:
                data = Oversized(info.size)
            else:
                file = tar.extractfile(info)
                data = file.read() if file is not None else b""
            yield {"fname": info.name, "data": data, "__url__": shard, "offset": base + info.offset}
            tar.members = []  # tarfile keeps every header it has seen; a shard can hold millions


def _with_offsets(files: Iterable[dict], starts: "collections.deque[int]") -> Iterator[dict]:
    """Pass members on to webdataset's grouping, noting where each new sample (a change of key) starts.

    The grouping yields exactly one sample per change of key, in order, so the i-th sample it yields started at
    the i-th offset noted here.
    """
    key = None
    for file in files:
        prefix = base_plus_ext(file["fname"])[0]
        if prefix is not None and prefix != key:
            starts.append(file["offset"])
            key = prefix
        yield file


def _until_error(files: Iterable[dict]) -> Iterator[dict]:
    try:
        yield from files
    except Exception:  # tarfile.ReadError, an I/O error: the rest of the tar is lost
        return


def _kept(sample: dict, members: Collection[str], offset: int) -> RawSample:
    """Only the declared members are kept (the rest never reach a decoder or the shuffle buffer), tagged with
    the sample's offset; an oversized member is replaced by `__oversized__` (a counted skip later)."""
    kept = {k: v for k, v in sample.items() if k in members or k in ("__key__", "__url__")}
    kept["__offset__"] = offset
    oversized = {k: v.size for k, v in kept.items() if isinstance(v, Oversized)}
    if oversized:
        kept = {k: v for k, v in kept.items() if k not in oversized}
        kept["__oversized__"] = ", ".join(f".{k} of {n:,} bytes" for k, n in oversized.items())
    return kept


def _open_at(shard: str, allow_shell_urls: bool, start: int) -> tuple[IO[bytes], int]:
    """The shard opened at byte `start` when it can be entered there (an uncompressed local tar), else at 0.
    Returns the stream and the offset it was entered at."""
    stream = _open(shard, allow_shell_urls)
    if start > 0 and not is_url(shard) and not _is_compressed(stream):
        stream.seek(start)
        return stream, start
    return stream, 0


def read_shard(shard: str, members: Collection[str], allow_shell_urls: bool = False,
               expected: Optional[int] = None, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
               start: int = 0, delivered_before: int = 0) -> Iterator[Union[RawSample, ShardFailure]]:
    """The samples of one shard, holding only `members` (extensions), then a ShardFailure if it broke.

    Member grouping is webdataset's (`<key>.<ext>`, consecutive members with one key form a sample). Each sample
    carries `__offset__`, the byte offset of its first member's header, so a reader can come back to it (`start`:
    begin with the sample at that offset; a compressed tar is read from its beginning and the samples before
    `start` are dropped unread by any decoder). A declared member over `max_member_bytes` is replaced by
    `__oversized__` (a counted skip later). `expected` (from sizes.json) says how many samples a broken shard
    lost, `delivered_before` how many of them an earlier reading already delivered; unknown, a failure counts
    as one.
    """
    delivered, files_read, failure = delivered_before, 0, None

    def until_failure(files: Iterable[dict]) -> Iterator[dict]:
        # Ends the member stream at the first error, so webdataset's grouping still hands over the sample it
        # was assembling (every member of it that was read whole), not just the samples before it.
        nonlocal files_read, failure
        try:
            for file in files:
                files_read += 1
                yield file
        except Exception as e:  # tarfile.ReadError, an I/O error: the rest of the tar is lost
            failure = e

    try:
        stream, base = _open_at(shard, allow_shell_urls, start)
    except OSError as e:
        yield ShardFailure(shard, "shard_unreadable", f"{type(e).__name__}: {e}",
                           max((expected or 1) - delivered_before, 1))
        return
    starts: collections.deque[int] = collections.deque()
    try:
        files = _tar_members(stream, shard, members, max_member_bytes, base)
        for sample in group_by_keys(until_failure(_with_offsets(files, starts)), handler=wds.reraise_exception):
            offset = starts.popleft()
            if offset < start:
                continue  # a compressed tar read from its start, up to the sample asked for
            delivered += 1
            yield _kept(sample, members, offset)
    except Exception as e:  # from the grouping: a duplicate member name ends the shard too
        failure = e
    finally:
        stream.close()
    if failure is not None:
        reason = "shard_unreadable" if files_read == 0 and start == 0 else "shard_truncated"
        detail = f"{type(failure).__name__}: {failure.args[0] if failure.args else failure}"
        yield ShardFailure(shard, reason, detail, max((expected or 0) - delivered, 1))


def read_shards(shards: Iterable[str], members: Collection[str], allow_shell_urls: bool = False,
                sizes: Optional[Mapping[str, int]] = None, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
                ) -> Iterator[Union[RawSample, ShardFailure]]:
    for shard in shards:
        yield from read_shard(shard, members, allow_shell_urls, (sizes or {}).get(shard), max_member_bytes)


def read_samples_at(shard: str, offsets: Iterable[int], members: Collection[str], allow_shell_urls: bool = False,
                    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> dict[int, Union[RawSample, ShardFailure]]:
    """The samples of `shard` that start at `offsets` (from `__offset__`): a resumed reader refills its shuffle
    buffer this way instead of re-reading its pass. An uncompressed local tar is opened once and entered at each
    offset (reading that sample's members only); a compressed one is read once up to the last offset."""
    wanted = sorted(set(offsets))
    found: dict[int, Union[RawSample, ShardFailure]] = {}
    try:
        stream = _open(shard, allow_shell_urls)
    except OSError as e:
        stream = None
        failure = f"{type(e).__name__}: {e}"
    if stream is not None:
        with stream:
            if is_url(shard) or _is_compressed(stream):
                for item in read_shard(shard, members, allow_shell_urls, None, max_member_bytes):
                    if isinstance(item, ShardFailure) or item["__offset__"] > wanted[-1]:
                        break
                    if item["__offset__"] in wanted:
                        found[item["__offset__"]] = item
            else:
                for offset in wanted:
                    stream.seek(offset)
                    files = _tar_members(stream, shard, members, max_member_bytes, offset, one_sample=True)
                    try:  # as read_shard does: a break ends the members, and the sample read so far is kept
                        sample = next(group_by_keys(_until_error(files), handler=wds.reraise_exception), None)
                    except Exception:  # from the grouping (a duplicate member): a sample no longer there
                        sample = None
                    if sample is not None:
                        found[offset] = _kept(sample, members, offset)
        failure = "the shard changed since the checkpoint"
    for offset in wanted:
        if offset not in found:
            found[offset] = ShardFailure(shard, "shard_truncated", f"no sample starts at byte {offset} ({failure})", 1)
    return found
