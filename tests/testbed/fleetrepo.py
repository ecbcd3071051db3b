"""A real fleet repository made with the git CLI, optionally with SSH-signed commits.

``FleetRepo`` is a working clone; ``bare`` is the repository servers export. Commits
are written with ``commit(files, ...)`` where files maps repo paths to bytes (None
deletes). Signing uses git's own ``gpg.format=ssh`` so the agent is tested against
exactly what operators produce.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Fleet Operator",
    "GIT_AUTHOR_EMAIL": "ops@example.org",
    "GIT_COMMITTER_NAME": "Fleet Operator",
    "GIT_COMMITTER_EMAIL": "ops@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def git(cwd: Path, *args: str, check: bool = True) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass
class SigningKey:
    """An ed25519 SSH key and an allowed_signers file trusting it as ``principal``."""

    private: Path
    public: Path
    allowed_signers: Path
    principal: str

    @classmethod
    def create(cls, directory: Path, principal: str = "ops@example.org") -> SigningKey:
        directory.mkdir(parents=True, exist_ok=True)
        key = directory / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(key)],
            check=True,
        )
        pub = key.with_suffix(".pub")
        allowed = directory / "allowed_signers"
        allowed.write_text(f'{principal} namespaces="git" {pub.read_text().strip()}\n')
        return cls(private=key, public=pub, allowed_signers=allowed, principal=principal)


class FleetRepo:
    """A bare repository (``bare``) plus a work clone used to make commits."""

    def __init__(self, root: Path, name: str = "fleet") -> None:
        self.root = root
        self.bare = root / f"{name}.git"
        self.work = root / f"{name}-work"
        root.mkdir(parents=True, exist_ok=True)
        git(root, "init", "-q", "--bare", "-b", "main", str(self.bare))
        git(root, "init", "-q", "-b", "main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(
        self,
        files: Mapping[str, bytes | str | None],
        branch: str = "stable",
        message: str = "change",
        sign: SigningKey | None = None,
        push: bool = True,
        executable: tuple[str, ...] = (),
    ) -> str:
        """Write files on ``branch`` (created from the current head if new), commit, push."""
        branches = git(self.work, "branch", "--list", branch)
        has_head = git(self.work, "rev-parse", "--verify", "-q", "HEAD", check=False)
        if branches:
            git(self.work, "checkout", "-q", branch)
        elif has_head:
            git(self.work, "checkout", "-q", "-b", branch)
        else:
            git(self.work, "checkout", "-q", "--orphan", branch)
        removed, added = [], []
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                removed.append(rel)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
            os.chmod(path, 0o755 if rel in executable else 0o644)
            added.append(rel)
        # One git call each, however many files (the fault campaign commits hundreds).
        if removed:
            git(self.work, "rm", "-q", "-r", "--", *removed)
        if added:
            git(self.work, "add", "--", *added)
        args = ["commit", "-q", "--allow-empty", "-m", message]
        if sign is not None:
            args = [
                "-c",
                "gpg.format=ssh",
                "-c",
                f"user.signingkey={sign.private}",
                *args,
                "-S",
            ]
        git(self.work, *args)
        sha = git(self.work, "rev-parse", "HEAD")
        if push:
            self.push(branch)
        return sha

    def push(self, branch: str, sha: str | None = None, force: bool = False) -> None:
        ref = f"{sha or branch}:refs/heads/{branch}"
        git(self.work, "push", "-q", *(["--force"] if force else []), "origin", ref)

    def head(self, branch: str = "stable") -> str:
        return git(self.bare, "rev-parse", f"refs/heads/{branch}")


@pytest.fixture
def fleet_repo(tmp_path: Path) -> Iterator[FleetRepo]:
    yield FleetRepo(tmp_path / "repos")


@pytest.fixture
def signing_key(tmp_path: Path) -> SigningKey:
    return SigningKey.create(tmp_path / "signing")
