"""agent.source against real Git servers (git daemon, http-backend over HTTP(S), sshd)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import GitConfig
from agent.desired import GIT_MODE_EXEC, GIT_MODE_SYMLINK
from agent.errors import FetchError, SourceError
from agent.source import DEEPEN_STEPS, GitSource
from common.gittransport import redact_url
from tests.testbed.fleetrepo import FleetRepo, SigningKey, git
from tests.testbed.gitserver import TRANSPORTS, GitRemote, GitSshd
from tests.testbed.mosquitto import TlsFiles

transports = pytest.mark.parametrize("git_remote", TRANSPORTS, indirect=True)
served = pytest.mark.parametrize("git_remote", ["git", "http", "ssh"], indirect=True)


@pytest.fixture
def make_source(tmp_path: Path) -> Iterator[Any]:
    sources: list[GitSource] = []

    def make(remote: GitRemote, **overrides: Any) -> GitSource:
        src = GitSource(remote.config(**overrides), tmp_path / f"state{len(sources)}")
        sources.append(src)
        return src

    yield make
    for src in sources:
        src.close()


def packs(src_state: Path) -> list[str]:
    return sorted(p.name for p in (src_state / "repo.git/objects/pack").glob("*.pack"))


def state_dir(src: GitSource) -> Path:
    return src._path.parent


# -- transports ---------------------------------------------------------------------------


@transports
async def test_ls_remote_and_consecutive_fetches(git_remote: GitRemote, make_source: Any) -> None:
    repo = git_remote.repo
    src = make_source(git_remote)
    for i in range(5):
        sha = repo.commit({"common/files/etc/app.conf": f"version {i}\n"}, message=f"c{i}")
        assert await src.remote_head() == sha
        assert await src.fetch(sha) == sha
        desired = src.read_desired(sha)
        assert desired.files["files/etc/app.conf"].data == f"version {i}\n".encode()
    # Depth 1: history between fetches is never downloaded.
    skipped = [repo.commit({"common/files/x": f"{i}"}, message=f"skip{i}") for i in range(3)]
    head = await src.fetch()
    assert head == skipped[-1]
    assert not src.has_commit(skipped[0])
    assert not src.has_commit(skipped[1])


@transports
async def test_missing_branch(git_remote: GitRemote, make_source: Any) -> None:
    git_remote.repo.commit({"common/a": "a"}, branch="canary")
    src = make_source(git_remote, branch="stable")
    with pytest.raises(SourceError, match="branch 'stable' does not exist"):
        await src.remote_head()
    with pytest.raises(SourceError, match="branch 'stable' does not exist"):
        await src.fetch()


@transports
async def test_server_down_then_back(git_remote: GitRemote, make_source: Any) -> None:
    sha = git_remote.repo.commit({"common/a": "a"})
    src = make_source(git_remote, timeout=5.0)
    assert await src.fetch() == sha
    git_remote.server.stop()
    sha2 = git_remote.repo.commit({"common/a": "b"}, push=False)
    with pytest.raises(FetchError) as info:
        await src.remote_head()
    assert redact_url(git_remote.url) in str(info.value)
    # A commit already fetched needs no server.
    assert await src.fetch(sha) == sha
    git_remote.server.start()
    git_remote.repo.push("stable")
    assert await src.remote_head() == sha2
    assert await src.fetch(sha2) == sha2


@served
async def test_unchanged_head_does_no_download(git_remote: GitRemote, make_source: Any) -> None:
    sha = git_remote.repo.commit({"common/a": "a"})
    src = make_source(git_remote)
    await src.fetch()
    before = packs(state_dir(src))
    assert await src.fetch() == sha  # asks the server, downloads nothing
    assert packs(state_dir(src)) == before
    served_before = git_remote.server.connections()
    assert await src.fetch(sha) == sha  # already local: no network at all
    assert git_remote.server.connections() == served_before


@served
async def test_fetch_want_after_branch_moved_on(git_remote: GitRemote, make_source: Any) -> None:
    seen = git_remote.repo.commit({"common/a": "seen by ls-remote"})
    src = make_source(git_remote)
    assert await src.remote_head() == seen
    newer = git_remote.repo.commit({"common/a": "pushed meanwhile"})
    assert await src.fetch(seen) == seen
    assert src.read_desired(seen).files["a"].data == b"seen by ls-remote"
    assert await src.fetch() == newer


@pytest.mark.parametrize("git_remote", ["git"], indirect=True)
async def test_new_commit_downloads_only_new_objects(
    git_remote: GitRemote, make_source: Any
) -> None:
    files = {f"common/files/etc/f{i:03}.conf": f"file {i}\n" for i in range(60)}
    git_remote.repo.commit(files)
    src = make_source(git_remote)
    await src.fetch()
    before = set(packs(state_dir(src)))
    sha = git_remote.repo.commit({"common/files/etc/f000.conf": "changed\n"})
    assert await src.fetch() == sha
    (new,) = set(packs(state_dir(src))) - before
    pack = state_dir(src) / "repo.git/objects/pack" / new
    listing = subprocess.run(
        ["git", "verify-pack", "-v", str(pack.with_suffix(".idx"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [line for line in listing.splitlines() if line[:40].isalnum() and " " in line]
    # commit + root/common/files/etc trees + one blob, not 60 blobs of history.
    assert len(objects) <= 8, listing


# -- reading trees --------------------------------------------------------------------------


@pytest.mark.parametrize("git_remote", ["file"], indirect=True)
async def test_tree_ids_change_only_for_changed_paths(
    git_remote: GitRemote, make_source: Any
) -> None:
    paths = ("common", "sites/berlin", "nodes/pi-01", "nodes/absent")
    repo = git_remote.repo
    first = repo.commit({f"{p}/files/x": p for p in paths[:3]})
    src = make_source(git_remote, paths=paths)
    await src.fetch()
    ids1 = src.tree_ids(first)
    assert ids1["nodes/absent"] is None
    assert all(ids1[p] for p in paths[:3])
    second = repo.commit({"nodes/pi-01/files/x": "changed", "nodes/other/files/y": "y"})
    await src.fetch()
    ids2 = src.tree_ids(second)
    assert ids2["common"] == ids1["common"]
    assert ids2["sites/berlin"] == ids1["sites/berlin"]
    assert ids2["nodes/pi-01"] != ids1["nodes/pi-01"]
    assert ids2["nodes/absent"] is None


def _symlink_commit(repo: FleetRepo, rel: str, target: str) -> str:
    path = repo.work / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    git(repo.work, "add", "--", rel)
    git(repo.work, "commit", "-q", "-m", "symlink")
    repo.push("stable")
    return repo.head()


@pytest.mark.parametrize("git_remote", ["file"], indirect=True)
async def test_overlay_order_and_options(git_remote: GitRemote, make_source: Any) -> None:
    repo = git_remote.repo
    repo.commit(
        {
            "common/files/etc/app.conf": "common\n",
            "common/files/etc/only-common.conf": "kept\n",
            "common/systemd/app.service": "[Service]\nExecStart=/bin/true\n",
            "common/edgefleet.toml": (
                '[units."app.service"]\nstate = "stopped"\n'
                '[[health.http]]\nurl = "http://127.0.0.1:1/health"\n'
            ),
            "sites/berlin/files/etc/app.conf": "berlin\n",
            "sites/berlin/edgefleet.toml": (
                '[units."app.service"]\nenable = false\n[health]\ntimeout = 9\n'
            ),
            "nodes/pi-01/files/etc/app.conf": "pi-01\n",
            "nodes/pi-01/files/usr/local/bin/tool": "#!/bin/sh\n",
        },
        executable=("nodes/pi-01/files/usr/local/bin/tool",),
    )
    sha = _symlink_commit(repo, "nodes/pi-01/files/etc/link.conf", "app.conf")
    src = make_source(git_remote, paths=("common", "sites/berlin", "nodes/pi-01"))
    await src.fetch()
    desired = src.read_desired(sha)
    assert desired.commit == sha
    assert desired.paths == ("common", "sites/berlin", "nodes/pi-01")
    app = desired.files["files/etc/app.conf"]
    assert (app.data, app.origin) == (b"pi-01\n", "nodes/pi-01")
    kept = desired.files["files/etc/only-common.conf"]
    assert (kept.data, kept.origin) == (b"kept\n", "common")
    assert "edgefleet.toml" not in desired.files
    assert set(desired.under("systemd")) == {"app.service"}
    tool = desired.files["files/usr/local/bin/tool"]
    assert (tool.git_mode, tool.mode) == (GIT_MODE_EXEC, 0o755)
    link = desired.files["files/etc/link.conf"]
    assert (link.git_mode, link.data) == (GIT_MODE_SYMLINK, b"app.conf")
    # Later path wins per unit; health checks accumulate; the timeout comes from berlin.
    unit = desired.options.units["app.service"]
    assert (unit.enable, unit.state) == (False, "started")
    assert [c.url for c in desired.options.http_checks] == ["http://127.0.0.1:1/health"]
    assert desired.options.health_timeout == 9.0


@pytest.mark.parametrize("git_remote", ["file"], indirect=True)
async def test_bad_trees_are_source_errors(git_remote: GitRemote, make_source: Any) -> None:
    repo = git_remote.repo
    sha = repo.commit({"common/files/a": "a", "plain": "a file, not a directory"})
    src = make_source(git_remote, paths=("common", "nodes/ghost"))
    await src.fetch()
    with pytest.raises(SourceError, match=f"'nodes/ghost' does not exist in commit {sha[:12]}"):
        src.read_desired(sha)
    src_file = make_source(git_remote, paths=("plain",))
    await src_file.fetch()
    with pytest.raises(SourceError, match="'plain' is not a directory"):
        src_file.read_desired(sha)
    with pytest.raises(SourceError, match="not in the local Git cache"):
        src.read_desired("0" * 40)

    bad = repo.commit({"common/edgefleet.toml": "[units\n"})
    await src.fetch()
    with pytest.raises(SourceError, match=r"common/edgefleet\.toml"):
        src.read_desired(bad)

    (repo.work / "common/edgefleet.toml").write_text("")
    git(repo.work, "add", "common/edgefleet.toml")
    git(repo.work, "update-index", "--add", "--cacheinfo", f"160000,{sha},common/files/sub")
    git(repo.work, "commit", "-q", "-m", "submodule")
    repo.push("stable")
    sub = await src.fetch()
    with pytest.raises(SourceError, match=r"common/files/sub .* submodule"):
        src.read_desired(sub)


@pytest.mark.parametrize("git_remote", ["git"], indirect=True)
async def test_signed_payload_is_what_git_signed(
    git_remote: GitRemote, make_source: Any, signing_key: SigningKey, tmp_path: Path
) -> None:
    signed = git_remote.repo.commit({"common/a": "a"}, sign=signing_key)
    src = make_source(git_remote)
    await src.fetch()
    payload, signature = src.signed_payload(signed)
    assert signature is not None
    sig_file = tmp_path / "sig"
    sig_file.write_bytes(signature)
    verify = subprocess.run(
        [
            *("ssh-keygen", "-Y", "verify", "-f", str(signing_key.allowed_signers)),
            *("-I", signing_key.principal, "-n", "git", "-s", str(sig_file)),
        ],
        input=payload,
        capture_output=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr

    unsigned = git_remote.repo.commit({"common/a": "b"})
    await src.fetch()
    raw = subprocess.run(
        ["git", "cat-file", "commit", unsigned],
        cwd=git_remote.repo.bare,
        capture_output=True,
        check=True,
    ).stdout
    assert src.signed_payload(unsigned) == (raw, None)


# -- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("git_remote", ["http", "https"], indirect=True)
async def test_wrong_token_then_rotated(git_remote: GitRemote, make_source: Any) -> None:
    sha = git_remote.repo.commit({"common/a": "a"})
    token_file = git_remote.settings["token_file"]
    good = token_file.read_text()
    token_file.write_text("wrong-token-123\n")
    src = make_source(git_remote)
    with pytest.raises(FetchError, match="authentication failed") as info:
        await src.fetch()
    assert "wrong-token-123" not in str(info.value)
    assert "s3cr3t" not in str(info.value)
    token_file.write_text(good)  # rotated: read again at the next operation
    assert await src.fetch() == sha


@pytest.mark.parametrize("git_remote", ["https"], indirect=True)
async def test_https_refuses_unknown_ca(
    git_remote: GitRemote, make_source: Any, tmp_path: Path
) -> None:
    git_remote.repo.commit({"common/a": "a"})
    other = TlsFiles.create(tmp_path / "other-ca")
    src = make_source(git_remote, ca_file=other.ca)
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED") as info:
        await src.remote_head()
    assert git_remote.url in str(info.value)
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize("git_remote", ["ssh"], indirect=True)
async def test_unknown_ssh_host_key_is_refused(
    git_remote: GitRemote, make_source: Any, tmp_path: Path
) -> None:
    git_remote.repo.commit({"common/a": "a"})
    assert isinstance(git_remote.server, GitSshd)
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    wrong = tmp_path / "known_hosts_wrong"
    port = git_remote.server.port
    wrong.write_text(f"[127.0.0.1]:{port} {stranger.with_suffix('.pub').read_text()}")
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    for known_hosts in (wrong, empty):
        src = make_source(git_remote, known_hosts=known_hosts)
        with pytest.raises(FetchError, match="Host key verification failed"):
            await src.fetch()
    assert empty.read_text() == ""  # never accepted on first use


@pytest.mark.timeout(30)
async def test_silent_server_times_out(silent_git_url: str, tmp_path: Path) -> None:
    src = GitSource(GitConfig(url=silent_git_url, paths=("common",), timeout=1.0), tmp_path)
    try:
        with pytest.raises(FetchError, match=r"no answer within 1s"):
            await src.remote_head()
    finally:
        src.close()


def test_redact_url() -> None:
    assert redact_url("https://user:pw@example.org:8443/x.git") == (
        "https://user@example.org:8443/x.git"
    )
    assert redact_url("https://example.org/x.git") == "https://example.org/x.git"
    assert redact_url("git@example.org:fleet.git") == "git@example.org:fleet.git"


# -- history --------------------------------------------------------------------------------


@pytest.mark.parametrize("git_remote", ["git"], indirect=True)
async def test_is_ancestor_across_gaps_and_force_push(
    git_remote: GitRemote, make_source: Any
) -> None:
    repo = git_remote.repo
    early = [repo.commit({"common/a": f"early {i}"}) for i in range(3)]
    src = make_source(git_remote)
    assert await src.fetch() == early[-1]
    for i in range(20):  # a gap longer than the first deepen step
        repo.commit({"common/a": f"gap {i}"})
    head = await src.fetch()
    assert await src.is_ancestor(early[-1], head)
    assert await src.is_ancestor(head, head)

    # Cheap common case: one commit on top needs no network.
    top = repo.commit({"common/a": "top"})
    assert await src.fetch() == top
    served = git_remote.server.connections()
    assert await src.is_ancestor(head, top)
    assert not await src.is_ancestor(top, head)
    assert git_remote.server.connections() == served

    # Force-push back to an older commit: the applied head is not in its history.
    fresh = make_source(git_remote)
    assert await fresh.fetch() == top
    repo.push("stable", sha=early[1], force=True)
    assert await fresh.fetch() == early[1]
    assert not await fresh.is_ancestor(top, early[1])
    assert await fresh.is_ancestor(early[0], early[1])

    # Force-push to an unrelated root commit.
    git(repo.work, "checkout", "-q", "--orphan", "unrelated")
    git(repo.work, "commit", "-q", "--allow-empty", "-m", "unrelated root")
    repo.push("stable", sha="unrelated", force=True)
    unrelated = await fresh.fetch()
    assert unrelated == repo.head()
    assert not await fresh.is_ancestor(top, unrelated)


@pytest.mark.parametrize("git_remote", ["git"], indirect=True)
async def test_is_ancestor_gives_up_beyond_bound(
    git_remote: GitRemote, make_source: Any, caplog: pytest.LogCaptureFixture
) -> None:
    repo = git_remote.repo
    base = repo.commit({"common/a": "base"})
    src = make_source(git_remote)
    await src.fetch()
    tree = git(repo.work, "rev-parse", "HEAD^{tree}")
    parent = base
    for i in range(DEEPEN_STEPS[-1] + 5):
        parent = git(repo.work, "commit-tree", tree, "-p", parent, "-m", f"n{i}")
    repo.push("stable", sha=parent)
    head = await src.fetch()
    assert head == parent
    assert not await src.is_ancestor(base, head)
    assert "not within 512 commits" in caplog.text


# -- housekeeping ---------------------------------------------------------------------------


@pytest.mark.parametrize("git_remote", ["git"], indirect=True)
async def test_maintain_bounds_the_cache(git_remote: GitRemote, make_source: Any) -> None:
    repo = git_remote.repo
    src = make_source(git_remote)
    shas = []
    for i in range(5):
        shas.append(repo.commit({"common/files/a": f"{i}", f"common/files/n{i}": "x"}))
        await src.fetch()
    assert len(packs(state_dir(src))) == 5
    src.maintain(keep=[shas[0]])
    assert len(packs(state_dir(src))) == 1
    assert src.has_commit(shas[0])
    assert src.has_commit(shas[-1])
    assert not any(src.has_commit(s) for s in shas[1:-1])
    assert src.read_desired(shas[0]).files["files/a"].data == b"0"
    assert src.read_desired(shas[-1]).files["files/n4"].data == b"x"
    nxt = repo.commit({"common/files/a": "next"})
    assert await src.fetch() == nxt
    assert await src.is_ancestor(shas[0], nxt)


async def test_broken_cache_is_rebuilt(fleet_repo: FleetRepo, tmp_path: Path) -> None:
    sha = fleet_repo.commit({"common/a": "a"})
    state = tmp_path / "state"
    (state / "repo.git").mkdir(parents=True)
    (state / "repo.git/HEAD").write_text("garbage")
    src = GitSource(GitConfig(url=fleet_repo.url, paths=("common",)), state)
    try:
        assert await src.fetch() == sha
    finally:
        src.close()
