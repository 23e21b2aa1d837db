"""Reading shards that strangers wrote: plain files only, declared members only, failures as values.

webdataset opens a URL through `gopen`, which runs `pipe:` URLs in a shell and http(s)/s3/gs URLs through
curl or gsutil subprocesses: a shard list would be a list of commands. So a shard here is a local file opened
with `open()`, and any URL is refused unless `data.allow_shell_urls` says otherwise. Within a shard only the
members a sample needs are kept (a `.pth` or `.pyd` member is dropped as bytes, never decoded or unpickled), and a
shard that cannot be opened or breaks partway becomes a `ShardFailure` in the stream instead of an exception,
so the samples it did hold are used and the loss is counted.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Optional, Union

import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from mmpretrain.data.shards import RawSample
from mmpretrain.errors import ConfigError

# `pipe:cmd`, `http://`, `s3://`, `gs://`, `file:`...: a scheme of two or more letters (so `C:\` stays a path).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


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


def read_shard(shard: str, members: Collection[str], allow_shell_urls: bool = False,
               expected: Optional[int] = None) -> Iterator[Union[RawSample, ShardFailure]]:
    """The samples of one shard, holding only `members` (extensions), then a ShardFailure if it broke.

    Member grouping is webdataset's (`<key>.<ext>`, consecutive members with one key form a sample). `expected`
    (from sizes.json) says how many samples a broken shard lost; unknown, a failure counts as one.
    """
    delivered, files_read, failure = 0, 0, None

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
        stream = _open(shard, allow_shell_urls)
    except OSError as e:
        yield ShardFailure(shard, "shard_unreadable", f"{type(e).__name__}: {e}", max(expected or 1, 1))
        return
    try:
        files = tar_file_expander([{"url": shard, "stream": stream}], handler=wds.reraise_exception)
        for sample in group_by_keys(until_failure(files), handler=wds.reraise_exception):
            delivered += 1
            # Every member is read (a sample of only unknown members must still be counted as a skip), but only
            # the declared ones are kept: the rest never reach a decoder or the shuffle buffer.
            yield {k: v for k, v in sample.items() if k in members or k in ("__key__", "__url__")}
    except Exception as e:  # from the grouping: a duplicate member name ends the shard too
        failure = e
    finally:
        stream.close()
    if failure is not None:
        reason = "shard_unreadable" if files_read == 0 else "shard_truncated"
        detail = f"{type(failure).__name__}: {failure.args[0] if failure.args else failure}"
        yield ShardFailure(shard, reason, detail, max((expected or 0) - delivered, 1))


def read_shards(shards: Iterable[str], members: Collection[str], allow_shell_urls: bool = False,
                sizes: Optional[Mapping[str, int]] = None) -> Iterator[Union[RawSample, ShardFailure]]:
    for shard in shards:
        yield from read_shard(shard, members, allow_shell_urls, (sizes or {}).get(shard))
