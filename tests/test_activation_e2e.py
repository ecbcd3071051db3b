"""Update locks and maintenance windows end to end: the real agent daemon, a real hub,
mosquitto and a git daemon. Windows are chosen relative to the current time in a
non-UTC zone; nothing fakes the clock."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.testbed.agentcfg import AgentSetup, write_agent_config
from tests.testbed.fleetrepo import FleetRepo
from tests.testbed.gitserver import GitRemote
from tests.testbed.hubproc import REPO_ROOT, HubProc
from tests.testbed.mosquitto import Mosquitto

NODE = "till-01"
ZONE = "Asia/Kathmandu"  # UTC+5:45: a window read in UTC by mistake is off by hours


def activation(tmp_path: Path, extra: str = "") -> str:
    return (
        f'[activation]\ninhibit_dir = "{tmp_path / "inhibit"}"\n'
        f'persistent_inhibit_dir = "{tmp_path / "inhibit-persistent"}"\npoll = 0.5\n{extra}'
    )


class Daemon:
    """``edgefleet-agent run`` as a process; stop() checks it exited cleanly."""

    def __init__(self, setup: AgentSetup) -> None:
        self.setup = setup
        self.proc: subprocess.Popen[str] | None = setup.popen("run")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=20)
        self.proc = None
        assert "Traceback" not in out, out


@dataclass
class Site:
    """One node's world: a git daemon, mosquitto, a hub, and the agent daemons started."""

    tmp_path: Path
    git: GitRemote
    mosquitto: Mosquitto
    hub: HubProc
    daemons: list[Daemon] = field(default_factory=list)

    def agent(self, activation_keys: str = "") -> AgentSetup:
        return write_agent_config(
            self.tmp_path / "agent", self.git.url, node=NODE, mqtt_url=self.mosquitto.url,
            interval=1, heartbeat=1, extra=activation(self.tmp_path, activation_keys),
        )  # fmt: skip

    def run(self, setup: AgentSetup) -> Daemon:
        daemon = Daemon(setup)
        self.daemons.append(daemon)
        return daemon

    def commit(self, setup: AgentSetup, content: str) -> str:
        return self.git.repo.commit({conf(setup): content})

    def node(self) -> dict[str, Any]:
        data: dict[str, Any] = self.hub.try_get(f"/api/v1/nodes/{NODE}")
        return data

    def wait(self, key: str, value: object) -> None:
        self.hub.wait_for(lambda: self.node().get(key) == value, timeout=30)

    def synced_on_v1(self, activation_keys: str = "") -> tuple[AgentSetup, str]:
        setup = self.agent(activation_keys)
        c1 = self.commit(setup, "v1\n")
        self.run(setup)
        self.wait("applied", c1)
        return setup, c1


@pytest.fixture
def site(
    tmp_path: Path,
    git_remote: GitRemote,
    mosquitto: Mosquitto,
    hub_factory: Callable[..., HubProc],
) -> Iterator[Site]:
    world = Site(tmp_path, git_remote, mosquitto, hub_factory())
    yield world
    for daemon in world.daemons:
        daemon.stop()


def conf(setup: AgentSetup) -> str:
    return f"common/files{setup.root}/app.conf"


def hub_cli(hub: HubProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args, "--config", str(hub.config)],
        capture_output=True, text=True, timeout=30, check=False, cwd=REPO_ROOT,
    )  # fmt: skip


def test_lock_defers_then_release_applies_with_git_down(site: Site) -> None:
    setup, c1 = site.synced_on_v1("max_ttl = 3600\n")
    locked = setup.cli("inhibit", "--reason", "sale in progress", "--name", "till", "--ttl", "600")
    assert locked.returncode == 0, locked.stderr
    c2 = site.commit(setup, "v2\n")
    site.wait("state", "deferred")
    status = site.node()["status"]
    assert (status["reason"], status["message"]) == ("Locked", "locked: sale in progress (till)")
    assert status["desired"] == c2 and status["applied"] == c1
    assert 0 < status["deferred_until"] - time.time() <= 600
    assert site.hub.get("/api/v1/summary")["states"]["deferred"] == 1
    assert (setup.root / "app.conf").read_text() == "v1\n"  # pre-staged, nothing applied

    site.git.server.stop()  # the release must not need Git: c2 is in the cache
    released = setup.cli("inhibit", "--release", "--name", "till")
    assert released.returncode == 0, released.stderr
    site.wait("applied", c2)
    assert site.node()["state"] == "synced"
    assert (setup.root / "app.conf").read_text() == "v2\n"


def _local_window(start: timedelta, end: timedelta) -> tuple[str, float]:
    """A daily window from now+start to now+end in ZONE, and its next opening (Unix time)."""
    now = datetime.now(ZoneInfo(ZONE)).replace(second=0, microsecond=0)
    a, b = now + start, now + end
    opening = a if a > datetime.now(ZoneInfo(ZONE)) else a + timedelta(days=1)
    return f"{a:%H:%M}-{b:%H:%M}", opening.timestamp()


def test_window_in_local_time_defers_then_opens(site: Site) -> None:
    closed, opening = _local_window(timedelta(hours=3), timedelta(hours=4))
    setup = site.agent(f'window = "{closed}"\ntimezone = "{ZONE}"\n')
    c1 = site.commit(setup, "v1\n")
    daemon = site.run(setup)
    site.wait("state", "deferred")
    status = site.node()["status"]
    assert status["reason"] == "OutsideWindow" and status["desired"] == c1
    assert status["message"] == f"outside window {closed} {ZONE}"
    assert abs(status["deferred_until"] - opening) <= 1.0
    assert not (setup.root / "app.conf").exists()

    # The operator widens the window to include now: a restart with it applies the commit.
    daemon.stop()
    open_now, _ = _local_window(timedelta(hours=-1), timedelta(hours=2))
    site.run(site.agent(f'window = "{open_now}"\ntimezone = "{ZONE}"\n'))
    site.wait("applied", c1)
    assert site.node()["state"] == "synced"
    assert (setup.root / "app.conf").read_text() == "v1\n"


def test_lock_expiry_and_hub_override(site: Site) -> None:
    setup, _ = site.synced_on_v1()
    # A lock a local app dropped, expiring in 5 s: deferred until then, applied after.
    lock = site.tmp_path / "inhibit" / "pump.json"
    lock.parent.mkdir(exist_ok=True)
    lock.write_text(json.dumps({"reason": "filling tank 3", "expires": time.time() + 5}))
    c2 = site.commit(setup, "v2\n")
    site.wait("state", "deferred")
    site.wait("applied", c2)
    expired = site.hub.get(f"/api/v1/events?node={NODE}&type=lock_expired")["events"]
    assert [e["details"]["name"] for e in expired] == ["pump"]

    # A lock with no end in sight: the hub's override applies now, and is audited.
    setup.cli("inhibit", "--reason", "stocktaking", "--name", "till")
    c3 = site.commit(setup, "v3\n")
    site.wait("state", "deferred")
    for bad in (b'{"override": 5}', b'{"override": " "}'):
        status, body = site.hub.request("POST", f"/api/v1/nodes/{NODE}/sync", site.hub.token, bad)
        assert status == 400 and "override" in body["error"], body
    done = hub_cli(site.hub, "sync", NODE, "--override", "hotfix INC-42")
    assert done.returncode == 0, done.stderr
    site.wait("applied", c3)
    entry = site.hub.get("/api/v1/history")["history"][0]
    assert (entry["action"], entry["reason"], entry["evidence"]) == (
        "sync-override",
        "hotfix INC-42",
        {"node": NODE},
    )
    used = site.hub.get(f"/api/v1/events?node={NODE}&type=override")["events"]
    assert used[0]["details"]["held_by"] == "locked: stocktaking (till)"


# -- `sync --once` and `inhibit` as an operator runs them (file:// repo, no broker) -------


def test_repo_window_wins_unless_pinned(tmp_path: Path, fleet_repo: FleetRepo) -> None:
    open_now, _ = _local_window(timedelta(hours=-1), timedelta(hours=2))
    closed, _ = _local_window(timedelta(hours=3), timedelta(hours=4))
    window = f'window = "{open_now}"\ntimezone = "{ZONE}"\n'
    setup = write_agent_config(tmp_path / "a", fleet_repo.url, extra=activation(tmp_path, window))
    repo_says = f'[activation]\nwindow = "{closed}"\n'
    fleet_repo.commit({conf(setup): "v1\n", "common/edgefleet.toml": repo_says})
    run = setup.cli("sync", "--once")
    assert run.returncode == 1 and run.stdout.startswith(
        f"deferred: outside window {closed} {ZONE}"
    ), run.stdout + run.stderr
    assert not (setup.root / "app.conf").exists()

    pinned = activation(tmp_path, window + "pin = true\n")
    setup = write_agent_config(tmp_path / "a", fleet_repo.url, extra=pinned)
    run = setup.cli("sync", "--once")
    assert run.returncode == 0, run.stdout + run.stderr
    assert (setup.root / "app.conf").read_text() == "v1\n"


def test_disk_space_floor_refuses_before_writing(tmp_path: Path, fleet_repo: FleetRepo) -> None:
    extra = activation(tmp_path, 'min_free = "1000000 TiB"\n')
    setup = write_agent_config(tmp_path / "a", fleet_repo.url, extra=extra)
    fleet_repo.commit({conf(setup): "v1\n"})
    run = setup.cli("sync", "--once")
    assert run.returncode == 1
    assert run.stdout.startswith("error: only ") and "min_free" in run.stdout, run.stdout
    assert not (setup.root / "app.conf").exists()


def test_inhibit_command(tmp_path: Path, fleet_repo: FleetRepo) -> None:
    setup = write_agent_config(tmp_path / "a", fleet_repo.url, extra=activation(tmp_path))
    assert setup.cli("inhibit").stdout == "no update locks\n"
    made = setup.cli("inhibit", "--reason", "vehicle moving", "--name", "drive", "--persistent")
    assert made.returncode == 0 and "locked: vehicle moving (drive)" in made.stdout
    assert (tmp_path / "inhibit-persistent" / "drive.json").exists()
    listed = setup.cli("inhibit").stdout
    assert listed.startswith("active   vehicle moving (drive) until "), listed
    for bad in (["--ttl", "-5", "--reason", "x"], ["--reason", "x", "--name", "../etc"],
                ["--reason", " "]):  # fmt: skip
        run = setup.cli("inhibit", *bad)
        assert run.returncode == 2 and "Traceback" not in run.stderr, (bad, run.stderr)
    for no_reason in (["--ttl", "600"], ["--persistent", "--name", "x"]):
        run = setup.cli("inhibit", *no_reason)
        assert run.returncode == 2 and "need --reason" in run.stderr, (no_reason, run.stderr)
    assert not (tmp_path / "inhibit-persistent" / "x.json").exists()
    assert setup.cli("inhibit", "--release", "--name", "drive").returncode == 0
    missing = setup.cli("inhibit", "--release", "--name", "drive")
    assert missing.returncode == 1 and "no lock named drive" in missing.stderr


def test_drift_is_only_reported_while_locked(tmp_path: Path, fleet_repo: FleetRepo) -> None:
    setup = write_agent_config(tmp_path / "a", fleet_repo.url, extra=activation(tmp_path))
    fleet_repo.commit({conf(setup): "v1\n"})
    assert setup.cli("sync", "--once").returncode == 0
    app = setup.root / "app.conf"
    app.write_text("edited by hand\n")
    setup.cli("inhibit", "--reason", "stocktaking", "--name", "till")
    run = setup.cli("sync", "--once")
    assert run.returncode == 1 and run.stdout.startswith("drifted"), run.stdout + run.stderr
    assert f"drift modified  files:{app}" in run.stdout
    assert app.read_text() == "edited by hand\n"

    setup.cli("inhibit", "--release", "--name", "till")
    assert setup.cli("sync", "--once").returncode == 0
    assert app.read_text() == "v1\n"


def test_hub_stage_window_in_its_timezone(hub_factory: Callable[..., HubProc]) -> None:
    open_now, _ = _local_window(timedelta(hours=-1), timedelta(hours=2))
    closed, _ = _local_window(timedelta(hours=3), timedelta(hours=4))
    stages = "".join(
        f'[[stages]]\nname = "{name}"\nwindow = "{window}"\ntimezone = "{ZONE}"\n'
        for name, window in (("open", open_now), ("closed", closed))
    )
    hub = hub_factory(stages=stages)
    by_name = {s["name"]: s for s in hub.get("/api/v1/stages")["stages"]}
    assert by_name["open"]["window"] == {"windows": [open_now], "timezone": ZONE}
    assert (by_name["open"]["in_window"], by_name["closed"]["in_window"]) == (True, False)
