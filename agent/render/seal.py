"""Inventory digests that do not betray secrets.

The inventory (``state.json``) records a digest of every placed file so that unchanged
bytes are never rewritten and drift is found. A plain SHA-256 of a short secret (a PIN,
a password) is guessed offline in seconds, so secret files get an HMAC-SHA256 under a
random key made once and kept 0600 in the state dir instead. Both kinds are told apart
by their prefix; the key is read only when a secret is placed or checked.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from agent.desired import DesiredFile
from agent.errors import StateError
from agent.state import digest

KEY_FILE = "digest.key"
PREFIX = "hmac-sha256:"


class ContentSeal:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / KEY_FILE
        self._key: bytes | None = None

    def _load_key(self) -> bytes:
        if self._key is None:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            except OSError as err:
                raise StateError(f"cannot create {self.path}: {err.strerror}") from err
            else:
                with os.fdopen(fd, "wb") as out:
                    out.write(secrets.token_bytes(32))
                    out.flush()
                    os.fsync(out.fileno())
            try:
                self._key = self.path.read_bytes()
            except OSError as err:
                raise StateError(f"cannot read {self.path}: {err.strerror}") from err
            if len(self._key) < 32:
                raise StateError(f"{self.path} is truncated; remove it (secrets are re-placed)")
        return self._key

    def _hmac(self, data: bytes) -> str:
        return PREFIX + hmac.new(self._load_key(), data, hashlib.sha256).hexdigest()

    def digest(self, f: DesiredFile) -> str:
        """What the inventory records for ``f``."""
        return self._hmac(f.data) if f.secret else digest(f.data)

    def matches(self, data: bytes, recorded: str) -> bool:
        """True when live ``data`` has the recorded digest (either kind)."""
        if recorded.startswith(PREFIX):
            return hmac.compare_digest(self._hmac(data), recorded)
        return digest(data) == recorded
