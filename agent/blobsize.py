"""Sizes of Git blobs read from object headers, so an oversized file is never loaded.

A commit may carry a 200 MB file; reading it to find out costs 200 MB of RAM on a small
device. A blob's size is in its header: ``blob <size>\\0`` at the start of a loose
object, the type-and-size varint of a pack entry, or, for a delta entry, the result
size at the start of the delta. Each costs one small read and a few inflated bytes.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from dulwich.object_store import DiskObjectStore
from dulwich.objects import ObjectID

from agent.errors import SourceError

_OFS_DELTA, _REF_DELTA = 6, 7
_CHUNK = 512


def blob_size(store: DiskObjectStore, sha: ObjectID) -> int | None:
    """Size of blob ``sha`` in bytes; None if neither a pack nor a loose file holds it."""
    try:
        return _size(store, sha)
    except (OSError, IndexError, ValueError, zlib.error) as err:
        raise SourceError(f"cannot read the header of object {sha.decode()[:12]}: {err}") from err


def _size(store: DiskObjectStore, sha: ObjectID) -> int | None:
    for pack in store.packs:
        try:
            offset = pack.index.object_offset(sha)
        except KeyError:
            continue
        return _packed_size(os.fspath(pack.data.path), offset)
    hexsha = sha.decode("ascii")
    try:
        with open(os.path.join(store.path, hexsha[:2], hexsha[2:]), "rb") as f:
            head = _inflate_start(f, 0, 64)
    except FileNotFoundError:
        return None
    return int(head.partition(b"\0")[0].split(b" ")[1])


def _packed_size(path: str, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        header = f.read(32)
        byte = header[0]
        kind, size, shift, pos = (byte >> 4) & 7, byte & 15, 4, 1
        while byte & 0x80:
            byte = header[pos]
            size |= (byte & 0x7F) << shift
            shift, pos = shift + 7, pos + 1
        if kind == _OFS_DELTA:
            while header[pos] & 0x80:
                pos += 1
            pos += 1
        elif kind == _REF_DELTA:
            pos += 20
        if kind not in (_OFS_DELTA, _REF_DELTA):
            return size
        # A delta starts with two varints: the base's size, then the result's size.
        delta = _inflate_start(f, offset + pos, 20)
    values: list[int] = []
    value, shift = 0, 0
    for byte in delta:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(value)
            value, shift = 0, 0
            if len(values) == 2:
                return values[1]
    raise ValueError("truncated delta header")


def _inflate_start(f: BinaryIO, start: int, want: int) -> bytes:
    """The first ``want`` inflated bytes of the zlib stream at ``start`` (or all of it)."""
    f.seek(start)
    inflater = zlib.decompressobj()
    out = b""
    while len(out) < want and not inflater.eof:
        chunk = f.read(_CHUNK)
        if not chunk:
            break
        out += inflater.decompress(chunk, want - len(out))
        while inflater.unconsumed_tail and len(out) < want:
            out += inflater.decompress(inflater.unconsumed_tail, want - len(out))
    return out


@dataclass
class SizeBudget:
    """Per-file and per-commit byte limits ([targets.files] max_file_size, max_total_size)."""

    commit: str
    max_file_size: int
    max_total_size: int
    total: int = 0

    def take(self, where: str, size: int) -> None:
        """Count one file of ``size`` bytes; SourceError names it and the limit it breaks."""
        if size > self.max_file_size:
            raise SourceError(
                f"{where} in commit {self.commit[:12]} is {size:,} bytes, over "
                f"[targets.files] max_file_size ({self.max_file_size:,} bytes)"
            )
        self.total += size
        if self.total > self.max_total_size:
            raise SourceError(
                f"commit {self.commit[:12]}: files up to {where} add up to {self.total:,} "
                f"bytes, over [targets.files] max_total_size ({self.max_total_size:,} bytes)"
            )
