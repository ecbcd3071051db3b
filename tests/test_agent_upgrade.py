"""Agent upgrades, pure parts: version order, the [agent] pin, the resumable download.

The download runs against a real HTTP server with Range support on loopback
(tests/testbed/pkgserver.py); the install itself is tested in systemd containers
(tests/test_agent_upgrade_e2e.py).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from agent.agentpin import DEFAULT_UPGRADE_TIMEOUT, upgrade_pending
from agent.desired import merge_options, parse_options
from agent.errors import SourceError
from agent.upgrade import record as rec_file
from agent.upgrade.fetch import PackageRefused, PackageUnreachable, fetch_package
from agent.upgrade.package import check_package
from agent.upgrade.transient import unit_name
from agent.upgrade.version import compare
from tests.testbed.agentcfg import write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.pkgserver import package_server

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("0.9.1", "0.10.0"),
        ("1.0~rc1", "1.0"),
        ("1.0", "1.0+fix1"),
        ("1.0", "1.0.0"),
        ("1.0-1", "1.0-2"),
        ("1.0a", "1.0+"),
        ("1.0~~", "1.0~"),
        ("9.9", "1:0.1"),
    ],
)
def test_version_order_is_dpkgs(a: str, b: str) -> None:
    assert compare(a, b) == -1
    assert compare(b, a) == 1
    assert compare(a, a) == 0
    # The reference: dpkg itself.
    assert subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode == 0


def test_version_equal_with_implicit_revision() -> None:
    assert compare("1.0", "1.0-0") == 0
    assert compare("0:1.0", "1.0") == 0


def _pin(body: str) -> bytes:
    return f"[agent]\n{body}".encode()


def test_agent_pin_parsed_with_defaults() -> None:
    opts = parse_options(
        "common",
        _pin(f'version = "0.4.0"\npackage = "https://pkgs.example/ef.deb"\nsha256 = "{SHA}"\n'),
    )
    assert opts.agent is not None
    assert opts.agent.version == "0.4.0"
    assert opts.agent.sha256 == SHA
    assert not opts.agent.allow_downgrade
    assert opts.agent.upgrade_timeout == DEFAULT_UPGRADE_TIMEOUT


def test_agent_pin_later_path_wins() -> None:
    base = 'package = "http://p/x.deb"\n' + f'sha256 = "{SHA.upper()}"\n'
    common = parse_options("common", _pin('version = "0.4.0"\n' + base))
    node = parse_options(
        "nodes/pi", _pin('version = "0.3.0"\nallow_downgrade = true\nupgrade_timeout = 60\n' + base)
    )
    merged = merge_options([common, parse_options("sites/x", b""), node])
    assert merged.agent is not None
    assert (merged.agent.version, merged.agent.allow_downgrade) == ("0.3.0", True)
    assert merged.agent.upgrade_timeout == 60.0
    assert merged.agent.sha256 == SHA  # normalised to lower case
    assert merge_options([common, parse_options("x", b"")]).agent == common.agent


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('version = "v1"', "agent.version: must be a Debian version"),
        ('version = "1.0"\nsha256 = "x"', "agent.package: must be the http"),
        ('version = "1.0"\npackage = "file:///x.deb"', "agent.package: must be the http"),
        ('version = "1.0"\npackage = "http://p/x.deb"\nsha256 = "abc"', "agent.sha256: must be"),
        (
            f'version = "1.0"\npackage = "http://p/x"\nsha256 = "{SHA}"\nallow_downgrade = 1',
            "agent.allow_downgrade: must be true or false",
        ),
        (
            f'version = "1.0"\npackage = "http://p/x"\nsha256 = "{SHA}"\nupgrade_timeout = 0',
            "agent.upgrade_timeout: must be between 1 and 86400 seconds, got 0",
        ),
        (
            f'version = "1.0"\npackage = "http://p/x"\nsha256 = "{SHA}"\nchannel = "beta"',
            "agent.channel: unknown key",
        ),
    ],
)
def test_agent_pin_errors_name_path_and_key(body: str, message: str) -> None:
    with pytest.raises(SourceError) as err:
        parse_options("sites/berlin", _pin(body + "\n"))
    assert str(err.value).startswith(f"sites/berlin/edgefleet.toml: {message}"), err.value


def test_agent_must_be_a_table() -> None:
    with pytest.raises(SourceError, match=r"edgefleet.toml: agent: must be a table"):
        parse_options("common", b'agent = "0.4.0"\n')


def test_unit_name_is_valid_for_systemd() -> None:
    assert unit_name("0.4.0") == "edgefleet-upgrade-0.4.0"
    assert unit_name("1:0.4.0+git~1") == "edgefleet-upgrade-1:0.4.0_git_1"


def test_upgrade_pending_until_a_result(tmp_path: Path) -> None:
    assert not upgrade_pending(tmp_path)
    record = rec_file.UpgradeRecord("0.1.0", "0.2.0", SHA, "c" * 40, "u", True, 300.0)
    rec_file.save(tmp_path, record)
    assert upgrade_pending(tmp_path)
    assert rec_file.load(tmp_path) == record
    rec_file.write_result(tmp_path, "failed: boom")
    assert not upgrade_pending(tmp_path)
    assert rec_file.result(tmp_path) == "failed: boom"


# -- the download ---------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB, several chunks


def _serve(tmp_path: Path, data: bytes = PAYLOAD) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "ef.deb").write_bytes(data)
    return root


async def test_download_checks_hash_and_keeps_the_package(tmp_path: Path) -> None:
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    dest = tmp_path / "state/packages/edgefleet_0.2.0.deb"
    with package_server(_serve(tmp_path)) as srv:
        assert await fetch_package(srv.url("ef.deb"), sha, dest) == dest
        assert dest.read_bytes() == PAYLOAD
        # Kept: a second reconcile of the same pin downloads nothing.
        await fetch_package(srv.url("ef.deb"), sha, dest)
    assert srv.requests == [("/ef.deb", None)]
    assert not list(dest.parent.glob("*.part"))


async def test_download_resumes_with_range_after_a_cut(tmp_path: Path) -> None:
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    dest = tmp_path / "packages/edgefleet_0.2.0.deb"
    with package_server(_serve(tmp_path)) as srv:
        srv.cut_after = 300_000
        with pytest.raises(PackageUnreachable):
            await fetch_package(srv.url("ef.deb"), sha, dest)
        part = dest.parent / f"{sha}.part"
        assert part.stat().st_size == 300_000
        await fetch_package(srv.url("ef.deb"), sha, dest)
    assert srv.requests == [("/ef.deb", None), ("/ef.deb", "bytes=300000-")]
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()


async def test_download_restarts_when_the_kept_part_is_stale(tmp_path: Path) -> None:
    """Bytes kept from an older file at the same URL: the hash fails, one full retry."""
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    dest = tmp_path / "packages/edgefleet_0.2.0.deb"
    dest.parent.mkdir(parents=True)
    (dest.parent / f"{sha}.part").write_bytes(b"x" * 1000)
    with package_server(_serve(tmp_path)) as srv:
        await fetch_package(srv.url("ef.deb"), sha, dest)
    assert srv.requests == [("/ef.deb", "bytes=1000-"), ("/ef.deb", None)]
    assert dest.read_bytes() == PAYLOAD


async def test_hash_mismatch_is_refused_and_nothing_kept(tmp_path: Path) -> None:
    dest = tmp_path / "packages/edgefleet_0.2.0.deb"
    with package_server(_serve(tmp_path)) as srv, pytest.raises(PackageRefused) as err:
        await fetch_package(srv.url("ef.deb"), SHA, dest)
    assert f"the commit pins {SHA}" in str(err.value)
    assert hashlib.sha256(PAYLOAD).hexdigest() in str(err.value)
    assert not dest.exists()
    assert not list(dest.parent.iterdir())


async def test_missing_package_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "packages/edgefleet_0.2.0.deb"
    with package_server(_serve(tmp_path)) as srv, pytest.raises(PackageRefused, match="404"):
        await fetch_package(srv.url("nope.deb"), SHA, dest)


async def test_unreachable_server_is_transient(tmp_path: Path) -> None:
    with package_server(_serve(tmp_path)) as srv:
        url = srv.url("ef.deb")
    with pytest.raises(PackageUnreachable, match=r"package http://127\.0\.0\.1"):
        await fetch_package(url, SHA, tmp_path / "packages/x.deb")


# -- through the real agent CLI on this host (not installed with dpkg) -----------------


def test_idle_agent_does_not_import_the_upgrade_code() -> None:
    code = (
        "import sys, agent.service, agent.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('agent.upgrade')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_pin_on_a_node_without_dpkg_install_is_refused(
    tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    """This host runs the agent from a venv (as install.sh leaves it): no dpkg package."""
    agent = write_agent_config(
        tmp_path / "agent", fleet_repo.url, allowed_signers=signing_key.allowed_signers
    )
    target = f"common/files{agent.root}/app.conf"
    pin = f'[agent]\nversion = "9.9.9"\npackage = "http://127.0.0.1:9/x.deb"\nsha256 = "{SHA}"\n'
    fleet_repo.commit({target: "v1\n", "common/edgefleet.toml": pin}, sign=signing_key)
    done = agent.cli("sync", "--once")
    assert done.returncode == 1
    assert "refused" in done.stdout and "installed without dpkg" in done.stdout, done.stdout
    assert not (agent.root / "app.conf").exists()
    assert not (agent.state_dir / "upgrade").exists()
    assert not (agent.state_dir / "packages").exists()


# -- what the package says about itself (dpkg-deb -f, the real tool) -------------------


def _tiny_deb(tmp_path: Path, package: str, version: str, arch: str) -> Path:
    root = tmp_path / f"{package}-{version}-{arch}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: {arch}\n"
        "Maintainer: t <t@example.org>\nDescription: test\n"
    )
    deb = tmp_path / f"{root.name}.deb"
    subprocess.run(["dpkg-deb", "-b", str(root), str(deb)], check=True, capture_output=True)
    return deb


def _host_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


async def test_package_for_this_machine_passes(tmp_path: Path) -> None:
    await check_package(_tiny_deb(tmp_path, "edgefleet", "0.2.0", _host_arch()), "0.2.0")
    await check_package(_tiny_deb(tmp_path, "edgefleet", "0.2.0", "all"), "0.2.0")


async def test_package_for_another_architecture_is_refused(tmp_path: Path) -> None:
    other = "arm64" if _host_arch() != "arm64" else "amd64"
    deb = _tiny_deb(tmp_path, "edgefleet", "0.2.0", other)
    with pytest.raises(PackageRefused, match=f"package is for {other}, this node is"):
        await check_package(deb, "0.2.0")


@pytest.mark.parametrize(
    ("package", "version", "message"),
    [
        ("nginx", "0.2.0", "package is 'nginx', not edgefleet"),
        ("edgefleet", "0.2.1", "package is version 0.2.1, the pin says 0.2.0"),
    ],
)
async def test_package_must_be_the_pinned_one(
    tmp_path: Path, package: str, version: str, message: str
) -> None:
    deb = _tiny_deb(tmp_path, package, version, _host_arch())
    with pytest.raises(PackageRefused) as err:
        await check_package(deb, "0.2.0")
    assert str(err.value) == message


async def test_not_a_package_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "x.deb"
    junk.write_bytes(b"<html>not found</html>")
    with pytest.raises(PackageRefused, match=r"x\.deb is not a Debian package"):
        await check_package(junk, "0.2.0")
