"""common.gittransport against real servers: the retry kind of each failure, scrubbing."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from common.backoff import ErrorKind
from common.gittransport import GitError, GitRemote
from tests.testbed.gitserver import GitRemote as Served

TRANSIENT, TERMINAL = ErrorKind.TRANSIENT, ErrorKind.TERMINAL


def failure(remote: GitRemote) -> GitError:
    with pytest.raises(GitError) as info:
        remote.refs("ls-remote", [b"refs/heads/"])
    return info.value


@pytest.mark.parametrize("git_remote", ["file", "git", "http", "ssh"], indirect=True)
def test_missing_repository_is_terminal(git_remote: Served) -> None:
    url = git_remote.url.replace("fleet.git", "nothing-here.git")
    err = failure(GitRemote(git_remote.config(url=url)))
    assert err.kind is TERMINAL
    assert "no Git repository at this URL" in str(err)


def test_refused_connection_is_transient() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: refused
        for url in (f"git://127.0.0.1:{port}/x.git", f"http://127.0.0.1:{port}/x.git"):
            err = failure(GitRemote(_access(url)))
            assert err.kind is TRANSIENT
            assert "refused" in str(err)


@pytest.mark.timeout(30)
def test_silent_server_is_transient(silent_git_url: str) -> None:
    err = failure(GitRemote(_access(silent_git_url, timeout=1.0)))
    assert (err.kind, str(err).split(": ", 1)[1]) == (TRANSIENT, "no answer within 1s (timed out)")


@pytest.mark.parametrize("git_remote", ["https"], indirect=True)
def test_refused_credentials_are_terminal_and_scrubbed(git_remote: Served, tmp_path: Path) -> None:
    token_file = git_remote.settings["token_file"]
    token_file.write_text("wrong-token-123\n")
    url = git_remote.url.replace("https://", "https://ops:pass-in-url@")
    err = failure(GitRemote(git_remote.config(url=url)))
    assert err.kind is TERMINAL
    assert "authentication failed" in str(err)
    assert "pass-in-url" not in str(err) and "wrong-token-123" not in str(err)
    assert f"https://ops@127.0.0.1:{urlsplit(url).port}/fleet.git:" in str(err)

    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    err = failure(GitRemote(git_remote.config(token_file=empty)))
    assert (err.kind, str(err).endswith(f"token_file {empty} is empty")) == (TERMINAL, True)


@pytest.mark.parametrize("git_remote", ["ssh"], indirect=True)
def test_unknown_host_key_is_terminal(git_remote: Served, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    err = failure(GitRemote(git_remote.config(known_hosts=empty)))
    assert err.kind is TERMINAL
    assert f"Host key verification failed: the server's key is not in {empty}" in str(err)


def test_scrub_hides_credentials_of_any_url() -> None:
    remote = GitRemote(_access("https://ops:hunter2@git.example.org/fleet.git"))
    assert remote.url == "https://ops@git.example.org/fleet.git"
    said = "redirected to https://bot:t0ken@mirror.example.org/x.git; hunter2 was refused"
    assert remote.scrub(said) == (
        "redirected to https://bot:***@mirror.example.org/x.git; *** was refused"
    )


def _access(url: str, timeout: float = 5.0) -> object:
    from agent.config import GitConfig  # noqa: PLC0415 - any GitAccess will do

    return GitConfig(url=url, paths=("common",), timeout=timeout)
