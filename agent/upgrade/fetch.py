"""Download a pinned package resumably: HTTP Range into ``<sha256>.part`` in the state
dir, so a metered or flaky link never pays twice for the same bytes, then check the
SHA-256 the signed commit names. urllib in a worker thread, as agent.httpcheck does.

A 404 and a hash mismatch are the commit's fault (:class:`PackageRefused`); anything else
(timeouts, 5xx, resets) is worth retrying and leaves the partial file to resume from.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from agent.errors import TerminalError, TransientError

CHUNK = 256 * 1024
TIMEOUT = 30.0
"""Seconds a connect or a read may stall before the download is retried later."""


class PackageRefused(TerminalError):
    """The pinned package cannot be what the commit asks for (404, hash, architecture)."""


class PackageUnreachable(TransientError):
    """The package server did not answer; the next reconcile resumes the download."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, part: Path) -> None:
    have = part.stat().st_size if part.exists() else 0
    # S310: the URL is http(s), checked by agent.agentpin.
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:  # noqa: S310
            # 206: the server continues where we stopped; 200: it ignored Range, start over.
            mode = "ab" if resp.status == 206 else "wb"
            expected = resp.headers.get("Content-Length")
            got = 0
            with part.open(mode) as out:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    got += len(chunk)
                out.flush()
                os.fsync(out.fileno())
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and have:
            return  # nothing left to send: the partial file is complete (or wrong: hash)
        if err.code in (404, 410):
            raise PackageRefused(f"package {url}: HTTP {err.code} (not found)") from err
        raise PackageUnreachable(f"package {url}: HTTP {err.code} {err.reason}") from err
    except (OSError, http.client.HTTPException) as err:
        raise PackageUnreachable(f"package {url}: {err}") from err
    if expected is not None and got < int(expected):
        # The connection dropped; what arrived stays in the part file for next time.
        raise PackageUnreachable(f"package {url}: connection lost after {got} of {expected} bytes")


def _fetch(url: str, sha256: str, dest: Path) -> None:
    part = dest.parent / f"{sha256}.part"
    resumed = part.exists() and part.stat().st_size > 0
    _download(url, part)
    got = file_sha256(part)
    if got != sha256 and resumed:
        # The bytes kept from last time may belong to an older file at that URL.
        part.unlink()
        _download(url, part)
        got = file_sha256(part)
    if got != sha256:
        part.unlink()
        raise PackageRefused(f"package {url}: sha256 is {got}, the commit pins {sha256}")
    part.replace(dest)


async def fetch_package(url: str, sha256: str, dest: Path) -> Path:
    """``dest`` holding exactly the pinned bytes: kept from before, or downloaded now."""
    await asyncio.to_thread(_fetch_unless_kept, url, sha256, dest)
    return dest


def _fetch_unless_kept(url: str, sha256: str, dest: Path) -> None:
    if dest.exists() and file_sha256(dest) == sha256:
        return
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _fetch(url, sha256, dest)
