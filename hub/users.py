"""API users and roles from fleet.toml ``[[users]]``: who may read, and who may act where.

A user holds a bearer token, given either as a file (``token_file``, read at each request
so it can rotate) or as its SHA-256 (``token_sha256``, safe to keep in Git). Roles:
``viewer`` reads; ``operator`` also promotes, rolls back, resumes and syncs nodes, but
only in its ``stages``; ``admin`` does everything. The legacy ``[hub] token_file`` is the
admin user named ``admin``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from common.tomlconf import Section

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
ADMIN = "admin"
"""Name of the user the legacy ``[hub] token_file`` authenticates."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    stages: tuple[str, ...] = ()
    """Stages an operator may act in (ignored for viewers and admins)."""
    token_file: Path | None = None
    token_sha256: str | None = None
    """Lowercase hex SHA-256 of the token, when the token itself is not on this host."""

    def may_operate(self, stage: str | None) -> bool:
        """May act (promote, roll back, resume, sync) in ``stage`` (None: no stage)."""
        if self.role == "admin":
            return True
        return self.role == "operator" and stage is not None and stage in self.stages


def valid_user_name(name: str) -> bool:
    return _NAME_RE.match(name) is not None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh random token and its SHA-256, for ``edgefleet-hub token create``."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def _user(sec: Section, stage_names: tuple[str, ...]) -> User:
    name = sec.text("name")
    if name is None or not valid_user_name(name):
        raise sec.err("name", f"is required: letters, digits, '.', '_', '@' or '-'; got {name!r}")
    role = cast(Role, sec.choice("role", "viewer", ROLES))
    stages = sec.str_list("stages") or ()
    for stage in stages:
        if stage not in stage_names:
            raise sec.err("stages", f"no stage named {stage!r}")
    if role == "operator" and not stages:
        raise sec.err("stages", "an operator needs the stages it may act in")
    token_file = sec.file("token_file")
    digest = sec.text("token_sha256")
    if (token_file is None) == (digest is None):
        raise sec.err("token_file", "give exactly one of token_file or token_sha256")
    if digest is not None and not _SHA256_RE.match(digest.lower()):
        raise sec.err("token_sha256", "must be 64 hex digits (edgefleet-hub token create)")
    sec.done()
    return User(name, role, stages, token_file, digest.lower() if digest else None)


def parse_users(
    root: Section, stage_names: tuple[str, ...], admin_token: Path | None
) -> tuple[User, ...]:
    """``[[users]]``, plus the admin of ``[hub] token_file`` when it is set."""
    sections = root.tables("users")
    users = [_user(sec, stage_names) for sec in sections]
    names = [u.name for u in users]
    for sec, user in zip(sections, users, strict=True):
        if names.count(user.name) > 1:
            raise sec.err("name", f"user {user.name!r} is defined twice")
        if admin_token is not None and user.name == ADMIN:
            raise sec.err("name", f"{ADMIN!r} is the user of [hub] token_file")
    if admin_token is not None:
        users.append(User(ADMIN, "admin", (), admin_token, None))
    return tuple(users)
