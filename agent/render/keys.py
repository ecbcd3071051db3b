"""This node's age identity: create it once, read it, derive its recipient.

The file has age-keygen's format (``# public key: age1...`` comment, one
``AGE-SECRET-KEY-1...`` line), so either tool can create or read it. Imports pyrage:
used by ``edgefleet-agent keygen`` and the rendering child, never by the daemon.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pyrage
from pyrage import x25519


class IdentityError(ValueError):
    """The identity file is missing, unreadable or holds no usable key."""


def load_identities(path: Path) -> list[x25519.Identity]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise IdentityError(
            f"age identity {path} does not exist (run edgefleet-agent keygen)"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise IdentityError(f"age identity {path} cannot be read: {err}") from err
    keys = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(x25519.Identity.from_str(line))
        except pyrage.IdentityError as err:
            # pyrage's message is not shown: it could quote part of the secret key.
            raise IdentityError(f"age identity {path} line {number}: not an age key") from err
    if not keys:
        raise IdentityError(f"age identity {path} holds no AGE-SECRET-KEY line")
    return keys


def recipient(path: Path) -> str:
    """The public recipient (``age1...``) of the identity's first key."""
    return str(load_identities(path)[0].to_public())


def ensure_identity(path: Path) -> tuple[str, bool]:
    """(recipient, created): make a new identity (0600) only if none exists yet."""
    if path.exists():
        return recipient(path), False
    key = x25519.Identity.generate()
    public = str(key.to_public())
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = f"# created: {created}\n# public key: {public}\n{key}\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_EXCL: two concurrent keygens must not each write a different key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return recipient(path), False
    except OSError as err:
        raise IdentityError(f"cannot create age identity {path}: {err.strerror or err}") from err
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    return public, True
