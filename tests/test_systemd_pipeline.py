"""The whole pipeline through the real CLI driving a real systemd (an nspawn container).

``edgefleet-agent sync --once`` runs on the host with ``[targets.systemd]`` pointed at
the container (unit_dir = its /etc/systemd/system, systemctl = an nsenter prefix), a
file:// fleet repository with SSH-signed commits and ``require_signed`` on. Files land
in an allowed root that is bind-mounted into the container, so units there read them.
One container per module; every test uses its own unit names, agent dir and repo.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common import wire
from tests.testbed.agentcfg import AgentSetup, write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import Watcher
from tests.testbed.nspawn import NspawnContainer, container_at

UNIT = """\
[Unit]
Description=edgefleet pipeline test {tag}

[Service]
{service}
[Install]
WantedBy=multi-user.target
"""
SLEEP = "ExecStart=/bin/sleep infinity\n"


def unit(tag: str, service: str = SLEEP) -> str:
    return UNIT.format(tag=tag, service=service)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Host directory shown read-only inside the container (agent dirs live below it)."""
    return tmp_path_factory.mktemp("sdpipe")


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Iterator[NspawnContainer]:
    base = tmp_path_factory.mktemp("nspawn") / "ct"
    with container_at(base, binds_ro=[shared]) as container:
        yield container


@pytest.fixture
def tag() -> str:
    return f"p{secrets.token_hex(3)}"


def make_agent(
    ct: NspawnContainer,
    directory: Path,
    repo: FleetRepo,
    key: SigningKey,
    *,
    drift_mode: str = "correct",
    mqtt_url: str | None = None,
    settle: float = 0.5,
) -> AgentSetup:
    systemd = (
        "[targets.systemd]\n"
        "enabled = true\n"
        f'unit_dir = "{ct.unit_dir}"\n'
        f"systemctl = {json.dumps(ct.systemctl_prefix)}\n"
    )
    setup = write_agent_config(
        directory,
        repo.url,
        allowed_signers=key.allowed_signers,
        drift_mode=drift_mode,
        mqtt_url=mqtt_url,
        extra=systemd,
    )
    # A crash loop is only visible if health must hold for a while (settle > 0).
    text = setup.config.read_text().replace("settle = 0\n", f"settle = {settle}\n")
    setup.config.write_text(text)
    return setup


@pytest.fixture
def agent(
    ct: NspawnContainer, shared: Path, tag: str, fleet_repo: FleetRepo, signing_key: SigningKey
) -> AgentSetup:
    return make_agent(ct, shared / tag, fleet_repo, signing_key)


def sync(setup: AgentSetup, expect: int = 0) -> str:
    done = setup.cli("sync", "--once")
    out = done.stdout + done.stderr
    assert done.returncode == expect, out
    return out


def status(setup: AgentSetup) -> dict[str, Any]:
    done = setup.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def invocation(ct: NspawnContainer, name: str) -> str:
    return ct.show(name, "InvocationID")["InvocationID"]


def live(ct: NspawnContainer, name: str) -> tuple[str, str]:
    props = ct.show(name, "ActiveState", "UnitFileState")
    return props["ActiveState"], props["UnitFileState"]


def test_install_change_restart_on_and_remove(
    ct: NspawnContainer, agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey, tag: str
) -> None:
    a, b = f"{tag}-a.service", f"{tag}-b.service"
    conf = agent.root / "b.conf"
    # b copies its config to /run at start: proves it reads the file placed by the agent.
    b_service = f"ExecStartPre=/bin/cp {conf} /run/{tag}-seen\n{SLEEP}"
    options = f'[units."{b}"]\nrestart_on = ["{agent.root}/*.conf"]\n'
    c1 = fleet_repo.commit(
        {
            f"common/systemd/{a}": unit("a"),
            f"common/systemd/{b}": unit("b", b_service),
            f"common/files{conf}": "v1\n",
            "common/edgefleet.toml": options,
        },
        sign=signing_key,
    )
    out = sync(agent)
    assert "files: 1 created; systemd: 2 created" in out
    assert live(ct, a) == live(ct, b) == ("active", "enabled")
    assert ct.run("cat", f"/run/{tag}-seen") == "v1\n"
    assert status(agent)["applied"] == c1
    first = {u: invocation(ct, u) for u in (a, b)}

    # A unit change restarts that unit only.
    fleet_repo.commit({f"common/systemd/{a}": unit("a2")}, sign=signing_key)
    sync(agent)
    assert ct.show(a, "Description")["Description"] == "edgefleet pipeline test a2"
    assert invocation(ct, a) != first[a]
    assert invocation(ct, b) == first[b]
    second = {u: invocation(ct, u) for u in (a, b)}

    # A file change restarts the unit whose restart_on matches it, and only that unit.
    fleet_repo.commit({f"common/files{conf}": "v2\n"}, sign=signing_key)
    out = sync(agent)
    assert "files: 1 configured; systemd: 2 unchanged" in out
    assert conf.read_text() == "v2\n"
    assert invocation(ct, b) != second[b]
    assert invocation(ct, a) == second[a]
    assert ct.run("cat", f"/run/{tag}-seen") == "v2\n"

    # Removing a unit from Git stops, disables and deletes it; b is untouched.
    third_b = invocation(ct, b)
    c4 = fleet_repo.commit({f"common/systemd/{a}": None}, sign=signing_key)
    out = sync(agent)
    assert "systemd: 1 unchanged, 1 deleted" in out
    assert not (ct.unit_dir / a).exists()
    assert ct.show(a, "LoadState")["LoadState"] == "not-found"
    assert invocation(ct, b) == third_b
    st = status(agent)
    assert st["applied"] == c4
    assert {i["subject"] for i in st["inventory"] if i["target"] == "systemd"} == {b}


def drift_setup(
    ct: NspawnContainer, setup: AgentSetup, repo: FleetRepo, key: SigningKey, tag: str
) -> dict[str, str]:
    """Five units applied, then changed by hand: edited, deleted, stopped, disabled, masked."""
    names = {k: f"{tag}-{k}.service" for k in ("edit", "delete", "stop", "disable", "mask")}
    repo.commit({f"common/systemd/{n}": unit(k) for k, n in names.items()}, sign=key)
    sync(setup)
    (ct.unit_dir / names["edit"]).write_text(unit("by hand"))
    (ct.unit_dir / names["delete"]).unlink()
    ct.run("systemctl", "stop", names["stop"])
    ct.run("systemctl", "disable", names["disable"])
    # `systemctl mask` refuses while the unit file is in /etc (and a runtime mask in /run
    # loses to /etc): an operator masks by replacing the file with a /dev/null link.
    (ct.unit_dir / names["mask"]).unlink()
    (ct.unit_dir / names["mask"]).symlink_to("/dev/null")
    ct.run("systemctl", "daemon-reload")
    assert ct.show(names["mask"], "LoadState")["LoadState"] == "masked"
    return names


def test_drift_by_hand_is_corrected(
    ct: NspawnContainer, agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey, tag: str
) -> None:
    names = drift_setup(ct, agent, fleet_repo, signing_key, tag)
    out = sync(agent)
    assert "synced" in out
    for name in names.values():
        assert live(ct, name) == ("active", "enabled"), name
        assert ct.show(name, "LoadState")["LoadState"] == "loaded", name
    assert (ct.unit_dir / names["edit"]).read_text() == unit("edit")
    assert not (ct.unit_dir / names["mask"]).is_symlink()
    assert (ct.unit_dir / names["delete"]).read_text() == unit("delete")
    assert ct.show(names["edit"], "Description")["Description"].endswith(" edit")
    sync(agent)  # and it stays synced


def test_drift_report_mode_only_reports(
    ct: NspawnContainer,
    shared: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    tag: str,
) -> None:
    setup = make_agent(ct, shared / tag, fleet_repo, signing_key, drift_mode="report")
    names = drift_setup(ct, setup, fleet_repo, signing_key, tag)
    out = sync(setup, expect=1)
    assert out.startswith("drifted")
    for kind, name in (
        ("modified", names["edit"]),
        ("missing", names["delete"]),
        ("stopped", names["stop"]),
        ("disabled", names["disable"]),
        ("masked", names["mask"]),
    ):
        assert f"drift {kind:<9} systemd:{name}" in out, out
    # Nothing was touched.
    assert (ct.unit_dir / names["edit"]).read_text() == unit("by hand")
    assert live(ct, names["stop"])[0] == "inactive"
    assert live(ct, names["disable"])[1] == "disabled"
    assert not (ct.unit_dir / names["delete"]).exists()
    assert ct.show(names["mask"], "LoadState")["LoadState"] == "masked"


async def test_crash_loop_rolls_back_files_and_units(
    ct: NspawnContainer,
    shared: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    mosquitto: Mosquitto,
    tag: str,
) -> None:
    setup = make_agent(ct, shared / tag, fleet_repo, signing_key, mqtt_url=mosquitto.url)
    node = "node-1"
    app = f"{tag}-app.service"
    conf = setup.root / "app.conf"
    c1 = fleet_repo.commit(
        {f"common/systemd/{app}": unit("good"), f"common/files{conf}": "good\n"},
        sign=signing_key,
    )
    assert "synced" in (await asyncio.to_thread(sync, setup))
    good_invocation = invocation(ct, app)

    crash = "ExecStart=/bin/sh -c 'sleep 0.2; exit 3'\nRestart=always\nRestartSec=0.1\n"
    c2 = fleet_repo.commit(
        {
            f"common/systemd/{app}": unit("crash", crash),
            f"common/files{conf}": "bad\n",
            # Per-commit health timeout: a crash loop is judged within 3 s.
            "common/edgefleet.toml": "[health]\ntimeout = 3\n",
        },
        sign=signing_key,
    )
    watcher = Watcher(mosquitto.port, [wire.events_topic(node)])
    try:
        await watcher.ready()
        started = time.monotonic()
        out = await asyncio.to_thread(sync, setup, 1)
        # Judged within the 3 s health timeout, then commit 1 is re-applied and settles.
        assert time.monotonic() - started < 12
        assert out.startswith("failed") and f"rolled back to {c1[:12]}" in out, out
        assert f"{app} " in out  # the message names the unhealthy unit

        # Files and units together are back at commit 1.
        assert conf.read_text() == "good\n"
        assert live(ct, app) == ("active", "enabled")
        assert ct.show(app, "Description")["Description"].endswith(" good")
        assert invocation(ct, app) != good_invocation
        st = status(setup)
        assert st["applied"] == c1 and st["last_good"] == c1
        assert st["bad_commits"] == [c2] and st["interrupted_apply"] is None

        event = await next_doc(watcher, wire.events_topic(node), lambda d: d["type"] == "rollback")
        assert event["commit"] == c2 and event["details"]["to"] == c1
        assert event["details"]["reason"] == "HealthCheckFailed"
        doc = await retained_status(mosquitto, node)
        assert (
            doc["state"] == "failed"
            and doc["reason"] == "HealthCheckFailed"
            and doc["applied"] == c1
        )
        assert doc["desired"] == c2 and doc["last_good"] == c1

        # The bad commit is not retried: no apply, nothing written, same invocation.
        state_mtime = (setup.state_dir / "state.json").stat().st_mtime_ns
        rolled_back = invocation(ct, app)
        out = await asyncio.to_thread(sync, setup, 1)
        assert "failed on this node before" in out
        doc = await retained_status(mosquitto, node)
        assert doc["state"] == "failed" and doc["reason"] == "KnownBadCommit"
        assert doc["applied"] == c1
        assert (setup.state_dir / "state.json").stat().st_mtime_ns == state_mtime
        assert invocation(ct, app) == rolled_back
        assert conf.read_text() == "good\n"
    finally:
        watcher.close()


async def retained_status(broker: Mosquitto, node: str) -> dict[str, Any]:
    """The node's retained status: what a hub connecting now would see."""
    watcher = Watcher(broker.port, [wire.status_topic(node)])
    try:
        msg = await watcher.next(timeout=10)
    finally:
        watcher.close()
    assert msg.retain
    doc: dict[str, Any] = json.loads(msg.payload)
    return doc


async def next_doc(watcher: Watcher, topic: str, match: Any) -> dict[str, Any]:
    """The next JSON document on ``topic`` that ``match`` accepts."""
    while True:
        msg = await watcher.next(timeout=10, topic=topic)
        doc: dict[str, Any] = json.loads(msg.payload)
        if match(doc):
            return doc


def test_unowned_unit_with_clashing_name_is_refused(
    ct: NspawnContainer, agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey, tag: str
) -> None:
    mine, theirs = f"{tag}-mine.service", f"{tag}-theirs.service"
    (ct.unit_dir / theirs).write_text(unit("installed by someone else"))
    ct.run("systemctl", "daemon-reload")
    fleet_repo.commit(
        {
            f"common/systemd/{mine}": unit("mine"),
            f"common/systemd/{theirs}": unit("from git"),
            f"common/files{agent.root}/app.conf": "x\n",
        },
        sign=signing_key,
    )
    out = sync(agent, expect=1)
    assert out.startswith("refused") and "refusing to overwrite unmanaged unit" in out, out
    assert theirs in out
    # Nothing of the commit was written: not the other unit, not the file, no inventory.
    assert (ct.unit_dir / theirs).read_text() == unit("installed by someone else")
    assert not (ct.unit_dir / mine).exists()
    assert not (agent.root / "app.conf").exists()
    st = status(agent)
    assert st["applied"] is None and st["inventory"] == []
