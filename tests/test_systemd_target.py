"""SystemdTarget against a real systemd (PID 1 of an nspawn container, tests/testbed/nspawn.py).

One container per module; every test uses unit names with its own random prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from agent.changeset import Action, ChangeSet
from agent.config import HealthConfig, SystemdConfig
from agent.desired import (
    GIT_MODE_SYMLINK,
    DesiredFile,
    DesiredState,
    HttpCheck,
    Options,
    UnitOptions,
)
from agent.errors import ApplyError, PlanError
from agent.healthwait import http_health
from agent.state import Owned
from agent.systemctl import Systemctl
from agent.targets.base import ApplyContext, Target
from agent.targets.systemd import SystemdTarget
from agent.targets.systemdunits import REMOVED_SUFFIX, unit_name_problem
from tests.testbed.nspawn import NspawnContainer
from tests.testbed.wait import until

REPO = Path(__file__).resolve().parents[1]

SLEEPER = """\
[Unit]
Description=edgefleet test {tag}

[Service]
ExecStart=/bin/sleep infinity
{extra}
[Install]
WantedBy=multi-user.target
"""


def sleeper(tag: str = "", extra: str = "") -> str:
    return SLEEPER.format(tag=tag, extra=extra)


class Inventory:
    """The inventory the pipeline keeps, in memory: ctx.record writes here."""

    def __init__(self) -> None:
        self.owned: dict[str, Owned] = {}

    def record(self, target: str, subject: str, owned: Owned | None) -> None:
        assert target == "systemd"
        if owned is None:
            self.owned.pop(subject, None)
        else:
            self.owned[subject] = owned

    def ctx(self, commit: str, changes: Mapping[str, ChangeSet] | None = None) -> ApplyContext:
        return ApplyContext(commit=commit, record=self.record, changes=changes or {})


def desired_state(
    files: Mapping[str, str | bytes],
    units: Mapping[str, UnitOptions] | None = None,
    commit: str = "c1",
    http: tuple[HttpCheck, ...] = (),
    modes: Mapping[str, int] | None = None,
) -> DesiredState:
    out = {}
    for rel, data in files.items():
        raw = data.encode() if isinstance(data, str) else data
        path = f"systemd/{rel}"
        out[path] = DesiredFile(path, raw, (modes or {}).get(rel, 0o100644), "common")
    return DesiredState(
        commit=commit,
        paths=("common",),
        files=out,
        options=Options(units=dict(units or {}), http_checks=http),
    )


async def sync(
    target: SystemdTarget, inv: Inventory, desired: DesiredState, **kw: object
) -> ChangeSet:
    """plan + apply + prune, the way the pipeline calls them."""
    plan = await target.plan(desired, inv.owned)
    ctx = inv.ctx(desired.commit, **kw)  # type: ignore[arg-type]
    await target.apply(plan, desired, ctx)
    await target.prune(plan, ctx)
    return plan


@pytest.fixture
def tag() -> str:
    return f"t{secrets.token_hex(3)}"


@pytest.fixture
def target(systemd_container: NspawnContainer) -> SystemdTarget:
    cfg = SystemdConfig(
        enabled=True,
        unit_dir=systemd_container.unit_dir,
        systemctl=tuple(systemd_container.systemctl_prefix),
    )
    return SystemdTarget(cfg, HealthConfig(timeout=20.0, settle=0.5))


def counting_prefix(tmp_path: Path, ct: NspawnContainer) -> tuple[tuple[str, ...], Path]:
    """A prefix that logs every systemctl invocation before running it."""
    log = tmp_path / "calls.log"
    wrapper = tmp_path / "count"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec "$@"\n')
    wrapper.chmod(0o755)
    return (str(wrapper), *ct.systemctl_prefix), log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_target_satisfies_protocol(target: SystemdTarget) -> None:
    checked: Target = target
    assert checked.name == "systemd"


async def test_install_start_change_restarts_only_changed(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    ct = systemd_container
    a, b = f"{tag}-a.service", f"{tag}-b.service"
    inv = Inventory()
    plan = await sync(target, inv, desired_state({a: sleeper("a"), b: sleeper("b")}))
    assert {c.subject: c.action for c in plan.changes} == {a: Action.CREATED, b: Action.CREATED}
    for unit in (a, b):
        props = ct.show(unit, "ActiveState", "UnitFileState")
        assert props == {"ActiveState": "active", "UnitFileState": "enabled"}
        assert inv.owned[unit].meta == {"enabled": True, "started": True}
    assert stat.S_IMODE((ct.unit_dir / a).stat().st_mode) == 0o644
    before = {u: ct.show(u, "InvocationID")["InvocationID"] for u in (a, b)}

    # Change a only: a is reloaded and restarted, b keeps running untouched.
    plan = await sync(target, inv, desired_state({a: sleeper("a2"), b: sleeper("b")}, commit="c2"))
    assert {c.subject: c.action for c in plan.changes} == {
        a: Action.CONFIGURED,
        b: Action.UNCHANGED,
    }
    assert ct.show(a, "InvocationID")["InvocationID"] != before[a]
    assert ct.show(b, "InvocationID")["InvocationID"] == before[b]
    assert ct.show(a, "Description")["Description"] == "edgefleet test a2"
    assert inv.owned[a].commit == "c2" and inv.owned[b].commit == "c1"


async def test_noop_costs_no_systemctl_and_drift_at_most_two(
    systemd_container: NspawnContainer, tag: str, tmp_path: Path
) -> None:
    prefix, log = counting_prefix(tmp_path, systemd_container)
    target = SystemdTarget(
        SystemdConfig(True, systemd_container.unit_dir, prefix), HealthConfig(20.0, 0.5)
    )
    files = {f"{tag}-{i}.service": sleeper(str(i)) for i in range(5)}
    files[f"{tag}-0.service.d/10-env.conf"] = "[Service]\nEnvironment=X=1\n"
    desired = desired_state(files)
    inv = Inventory()
    await sync(target, inv, desired)
    first = calls(log)
    # One enable, one daemon-reload, one restart, one show for the health baseline.
    assert len(first) <= 5, first

    log.unlink()
    plan = await sync(target, inv, desired)
    assert plan.empty
    assert calls(log) == []  # unchanged: no reload, no restart, not even a query

    assert await target.drift(desired, inv.owned) == []
    assert len(calls(log)) <= 2, calls(log)


async def test_dropin_change_restarts_its_unit(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    ct = systemd_container
    unit = f"{tag}.service"
    inv = Inventory()
    dropin = f"{unit}.d/10-env.conf"
    await sync(
        target, inv, desired_state({unit: sleeper(), dropin: "[Service]\nEnvironment=A=1\n"})
    )
    before = ct.show(unit, "InvocationID", "Environment")
    assert before["Environment"] == "A=1"
    plan = await sync(
        target, inv, desired_state({unit: sleeper(), dropin: "[Service]\nEnvironment=A=2\n"})
    )
    assert [(c.subject, c.action) for c in plan.writes] == [(dropin, Action.CONFIGURED)]
    after = ct.show(unit, "InvocationID", "Environment")
    assert after["Environment"] == "A=2"
    assert after["InvocationID"] != before["InvocationID"]

    # Dropping the drop-in removes it (and its now empty directory) and restarts the unit.
    plan = await sync(target, inv, desired_state({unit: sleeper()}))
    assert [(c.subject, c.action) for c in plan.writes] == [(dropin, Action.DELETED)]
    assert not (ct.unit_dir / f"{unit}.d").exists()
    assert ct.show(unit, "Environment")["Environment"] == ""
    assert dropin not in inv.owned


async def test_file_change_triggers_restart_on_and_reload_on(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    ct = systemd_container
    restarted, reloaded, other = (f"{tag}-{n}.service" for n in ("restart", "reload", "other"))
    marker = f"/run/{tag}-reloaded"
    units = {
        restarted: sleeper(),
        reloaded: sleeper(extra=f"ExecReload=/bin/sh -c 'echo r >> {marker}'\n"),
        other: sleeper(),
    }
    opts = {
        restarted: UnitOptions(restart_on=("/etc/app/*.conf",)),
        reloaded: UnitOptions(reload_on=("/etc/app/*",)),
        other: UnitOptions(restart_on=("/etc/other/*",)),
    }
    inv = Inventory()
    await sync(target, inv, desired_state(units, opts))
    before = {u: ct.show(u, "InvocationID")["InvocationID"] for u in units}

    files = ChangeSet("files")
    files.add("/etc/app/app.conf", Action.CONFIGURED)
    files.add("/etc/unrelated.conf", Action.UNCHANGED)
    plan = await sync(
        target, inv, desired_state(units, opts, commit="c2"), changes={"files": files}
    )
    assert plan.empty
    assert ct.show(restarted, "InvocationID")["InvocationID"] != before[restarted]
    assert ct.show(reloaded, "InvocationID")["InvocationID"] == before[reloaded]
    assert ct.show(other, "InvocationID")["InvocationID"] == before[other]
    assert Path(f"/proc/{ct.leader}/root{marker}").read_text() == "r\n"


async def test_remove_unit_stops_disables_deletes(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    ct = systemd_container
    keep, gone = f"{tag}-keep.service", f"{tag}-gone.service"
    dropin = f"{gone}.d/override.conf"
    inv = Inventory()
    await sync(
        target,
        inv,
        desired_state({keep: sleeper(), gone: sleeper(), dropin: "[Unit]\nDescription=x\n"}),
    )
    assert ct.show(gone, "ActiveState")["ActiveState"] == "active"
    plan = await sync(target, inv, desired_state({keep: sleeper()}))
    assert sorted(c.subject for c in plan.of(Action.DELETED)) == [gone, dropin]
    props = ct.show(gone, "ActiveState", "LoadState", "UnitFileState")
    assert props["ActiveState"] == "inactive"
    assert props["LoadState"] == "not-found"
    assert not (ct.unit_dir / gone).exists()
    assert not (ct.unit_dir / f"{gone}.d").exists()
    assert not list((ct.unit_dir / "multi-user.target.wants").glob(f"{gone}*"))
    assert set(inv.owned) == {keep}
    assert ct.show(keep, "ActiveState")["ActiveState"] == "active"


async def test_drift_detected_and_corrected(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    ct = systemd_container
    names = ("edited", "stopped", "disabled", "masked", "extra", "missing", "fine")
    units = {f"{tag}-{n}.service": sleeper(n) for n in names}
    desired = desired_state(units)
    inv = Inventory()
    await sync(target, inv, desired)
    assert await target.drift(desired, inv.owned) == []

    u = {n: f"{tag}-{n}.service" for n in names}
    (ct.unit_dir / u["edited"]).write_text(sleeper("edited by hand"))
    ct.run("systemctl", "stop", u["stopped"])
    ct.run("systemctl", "disable", u["disabled"])
    (ct.unit_dir / u["masked"]).unlink()
    ct.run("systemctl", "mask", u["masked"])
    extra_dir = ct.unit_dir / f"{u['extra']}.d"
    extra_dir.mkdir()
    (extra_dir / "99-hand.conf").write_text("[Service]\nEnvironment=HAND=1\n")
    (ct.unit_dir / u["missing"]).unlink()
    ct.run("systemctl", "daemon-reload")
    ct.run("systemctl", "stop", u["masked"])

    found = {(d["subject"], d["kind"]) for d in await target.drift(desired, inv.owned)}
    assert found == {
        (u["edited"], "modified"),
        (u["stopped"], "stopped"),
        (u["disabled"], "disabled"),
        (u["masked"], "masked"),
        (f"{u['extra']}.d/99-hand.conf", "extra"),
        (u["missing"], "missing"),
    }

    drift = await target.drift(desired, inv.owned)
    await target.correct(drift, desired, inv.ctx(desired.commit))
    assert await target.drift(desired, inv.owned) == []
    for unit in u.values():
        assert ct.show(unit, "ActiveState", "UnitFileState") == {
            "ActiveState": "active",
            "UnitFileState": "enabled",
        }, unit
    assert (ct.unit_dir / u["edited"]).read_text() == sleeper("edited")
    assert not (ct.unit_dir / u["masked"]).is_symlink()
    # The hand-made drop-in is kept aside, not lost, and no longer active.
    assert (extra_dir / f"99-hand.conf{REMOVED_SUFFIX}").read_text().startswith("[Service]")
    assert ct.show(u["extra"], "Environment")["Environment"] == ""


async def test_rerendered_unit_corrected_once_then_no_drift(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    """A template unit whose facts changed since apply (a kernel upgrade) renders new bytes
    for the same commit; when drift (here a hand edit) has it rewritten, correction records
    the new bytes' digest, so the next check finds no drift."""
    unit = f"{tag}-rendered.service"
    inv = Inventory()
    await sync(target, inv, desired_state({unit: sleeper("kernel 6.1")}))
    (systemd_container.unit_dir / unit).write_text(sleeper("edited by hand"))
    rerendered = desired_state({unit: sleeper("kernel 6.6")})

    drift = await target.drift(rerendered, inv.owned)
    assert [(d["subject"], d["kind"]) for d in drift] == [(unit, "modified")]
    await target.correct(drift, rerendered, inv.ctx(rerendered.commit))
    assert (systemd_container.unit_dir / unit).read_text() == sleeper("kernel 6.6")
    assert await target.drift(rerendered, inv.owned) == []
    assert systemd_container.show(unit, "ActiveState", "Description") == {
        "ActiveState": "active",
        "Description": "edgefleet test kernel 6.6",
    }


async def test_drift_ignores_unmanaged_units(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    ct = systemd_container
    mine, theirs = f"{tag}-mine.service", f"{tag}-theirs.service"
    (ct.unit_dir / theirs).write_text(sleeper("theirs"))
    ct.run("systemctl", "daemon-reload")
    desired = desired_state({mine: sleeper()})
    inv = Inventory()
    await sync(target, inv, desired)
    assert await target.drift(desired, inv.owned) == []
    assert ct.show(theirs, "ActiveState")["ActiveState"] == "inactive"


async def test_unowned_clashing_unit_refused_identical_adopted(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    ct = systemd_container
    unit = f"{tag}.service"
    (ct.unit_dir / unit).write_text("[Service]\nExecStart=/bin/true\n")
    inv = Inventory()
    with pytest.raises(PlanError, match=f"refusing to overwrite unmanaged unit {unit}"):
        await target.plan(desired_state({unit: sleeper()}), inv.owned)
    assert (ct.unit_dir / unit).read_text() == "[Service]\nExecStart=/bin/true\n"
    assert inv.owned == {}

    # The same bytes already there (an agent killed between write and record): adopt.
    (ct.unit_dir / unit).write_text(sleeper())
    plan = await sync(target, inv, desired_state({unit: sleeper()}))
    assert [(c.action, c.detail) for c in plan.changes] == [(Action.CREATED, "adopted")]
    assert ct.show(unit, "ActiveState")["ActiveState"] == "active"


async def test_resume_after_crash_between_write_and_restart(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    """An entry left pending (written, never restarted) is re-planned as a content change."""
    ct = systemd_container
    unit = f"{tag}.service"
    inv = Inventory()
    desired = desired_state({unit: sleeper()})
    await sync(target, inv, desired)
    before = ct.show(unit, "InvocationID")["InvocationID"]
    inv.owned[unit] = Owned(inv.owned[unit].digest, "c1", {"pending": True})
    plan = await sync(target, inv, desired)
    assert [(c.action, c.detail) for c in plan.changes] == [(Action.CONFIGURED, "content, options")]
    assert ct.show(unit, "InvocationID")["InvocationID"] != before
    assert inv.owned[unit].meta == {"enabled": True, "started": True}


async def test_options_stopped_then_started_without_restart_of_bytes(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    ct = systemd_container
    unit, plain = f"{tag}.service", f"{tag}-noinstall.service"
    files = {unit: sleeper(), plain: "[Service]\nExecStart=/bin/sleep infinity\n"}
    inv = Inventory()
    stopped = {unit: UnitOptions(state="stopped", enable=False)}
    await sync(target, inv, desired_state(files, stopped))
    assert ct.show(unit, "ActiveState", "UnitFileState") == {
        "ActiveState": "inactive",
        "UnitFileState": "disabled",
    }
    # No [Install] section: started, but nothing to enable.
    assert ct.show(plain, "ActiveState", "UnitFileState") == {
        "ActiveState": "active",
        "UnitFileState": "static",
    }
    plan = await sync(target, inv, desired_state(files))
    assert [(c.subject, c.action, c.detail) for c in plan.writes] == [
        (unit, Action.CONFIGURED, "options")
    ]
    assert ct.show(unit, "ActiveState", "UnitFileState") == {
        "ActiveState": "active",
        "UnitFileState": "enabled",
    }
    plan = await sync(target, inv, desired_state(files, stopped))
    assert ct.show(unit, "ActiveState", "UnitFileState") == {
        "ActiveState": "inactive",
        "UnitFileState": "disabled",
    }


async def test_templates_written_never_started(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    ct = systemd_container
    template, instance = f"{tag}@.service", f"{tag}@one.service"
    inv = Inventory()
    await sync(target, inv, desired_state({template: sleeper("%i"), instance: sleeper("x")}))
    assert (ct.unit_dir / template).exists()
    assert ct.show(instance, "ActiveState")["ActiveState"] == "active"
    assert inv.owned[template].meta == {"enabled": False, "started": False}
    assert await target.health(desired_state({template: sleeper("%i")}), inv.ctx("c1")) == []


async def test_crash_looping_unit_is_unhealthy(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    unit = f"{tag}-crash.service"
    body = (
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/false\n"
        "Restart=always\nRestartSec=100ms\n"
    )
    desired = desired_state({unit: body})
    inv = Inventory()
    await sync(target, inv, desired)
    problems: list[object] = []

    async def unhealthy() -> None:
        while not problems:
            problems.extend(await target.health(desired, inv.ctx("c1")))

    await asyncio.wait_for(unhealthy(), 15)
    assert problems[0].subject == unit  # type: ignore[attr-defined]
    assert unit in problems[0].reason  # type: ignore[attr-defined]


async def test_restart_counter_growth_is_unhealthy(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    """A unit that is active at every sample but restarted since apply is not healthy."""
    ct = systemd_container
    unit = f"{tag}.service"
    desired = desired_state({unit: sleeper(extra="Restart=always\nRestartSec=10ms\n")})
    inv = Inventory()
    await sync(target, inv, desired)
    assert await target.health(desired, inv.ctx("c1")) == []
    ct.run("systemctl", "kill", "--signal=KILL", unit)
    await until(lambda: int(ct.show(unit, "NRestarts")["NRestarts"]) >= 1, 15, f"{unit} restarted")
    await until(
        lambda: ct.show(unit, "ActiveState")["ActiveState"] == "active", 15, f"{unit} active"
    )
    problems = await target.health(desired, inv.ctx("c1"))
    assert [p.subject for p in problems] == [unit]
    assert "restarted 1 time(s)" in problems[0].reason


async def test_oneshot_health_and_failing_start(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    ok, remain, bad = (f"{tag}-{n}.service" for n in ("ok", "remain", "bad"))
    units = {
        ok: "[Service]\nType=oneshot\nExecStart=/bin/true\n",
        remain: "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
    }
    inv = Inventory()
    desired = desired_state(units)
    await sync(target, inv, desired)
    assert await target.health(desired, inv.ctx("c1")) == []

    units[bad] = f"[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo boom-{tag}; exit 3'\n"
    desired = desired_state(units, commit="c2")
    with pytest.raises(ApplyError, match=bad):
        await sync(target, inv, desired)
    problems = await target.health(desired, inv.ctx("c2"))
    assert [p.subject for p in problems] == [bad]
    assert "exit-code" in problems[0].reason
    assert f"boom-{tag}" in problems[0].reason  # the journal lines are in the reason


async def test_http_checks() -> None:
    """[[health.http]] checks run in the reconcile health loop for every kind of node."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        code = b"200 OK" if b" /ok " in request else b"503 Unavailable"
        writer.write(b"HTTP/1.1 " + code + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    closed = await asyncio.start_server(handle, "127.0.0.1", 0)
    dead = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    try:
        checks = (
            HttpCheck(f"http://127.0.0.1:{port}/ok"),
            HttpCheck(f"http://127.0.0.1:{port}/down"),
            HttpCheck(f"http://127.0.0.1:{dead}/", timeout=2.0),
        )
        problems = await http_health(desired_state({}, http=checks))
    finally:
        server.close()
        await server.wait_closed()
    assert [p.subject for p in problems] == [checks[1].url, checks[2].url]
    assert "answered 503, expected 200" in problems[0].reason
    assert "failed" in problems[1].reason


@pytest.mark.parametrize(
    "subject",
    [
        "noext",
        "foo.exe",
        "foo.scope",
        "a b.service",
        "ü.service",
        "..service",
        ".hidden.service",
        "@.service",
        "x@y@z.service",
        "x.service.d/y.txt",
        "x.service.d/sub/y.conf",
        "x.service.d/.conf",
        "x.d/y.conf",
        "sub/x.service",
        ("a" * 250) + ".service",
    ],
)
async def test_invalid_unit_names_refused(tmp_path: Path, subject: str) -> None:
    target = SystemdTarget(
        SystemdConfig(True, tmp_path, ("/nonexistent/systemctl",)), HealthConfig()
    )
    with pytest.raises(PlanError, match="invalid unit file name") as err:
        await target.plan(desired_state({subject: sleeper()}), {})
    assert subject in str(err.value)
    assert list(tmp_path.iterdir()) == []


async def test_symlinks_and_bad_option_names_refused(tmp_path: Path) -> None:
    target = SystemdTarget(SystemdConfig(True, tmp_path), HealthConfig())
    with pytest.raises(PlanError, match="symlinks are not allowed"):
        await target.plan(
            desired_state({"x.service": "/dev/null"}, modes={"x.service": GIT_MODE_SYMLINK}), {}
        )
    with pytest.raises(PlanError, match=r"units\.'nginx'"):
        await target.plan(desired_state({}, {"nginx": UnitOptions()}), {})


@pytest.mark.parametrize(
    "name", ["a.service", "a@.service", "a@b-c.timer", "dev-sda1.swap", "x:y_z.mount"]
)
def test_valid_unit_names(name: str) -> None:
    assert unit_name_problem(name) is None


async def test_systemctl_failures_become_apply_errors(tmp_path: Path) -> None:
    missing = Systemctl(["/nonexistent/systemctl"])
    with pytest.raises(ApplyError, match="cannot run"):
        await missing.daemon_reload()
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    with pytest.raises(ApplyError, match=r"no answer from systemd within 0\.2s"):
        await Systemctl([str(slow)], timeout=0.2).daemon_reload()
    failing = Systemctl(["sh", "-c", "echo nope >&2; exit 4", "systemctl"])
    with pytest.raises(ApplyError, match=r"systemctl restart -- a.service: nope|restart a.service"):
        await failing.verb("restart", ["a.service"])
    assert failing.journalctl_prefix == ("sh", "-c", "echo nope >&2; exit 4", "journalctl")


async def test_unit_fails_to_load_names_unit(
    target: SystemdTarget, systemd_container: NspawnContainer, tag: str
) -> None:
    unit = f"{tag}.service"
    inv = Inventory()
    with pytest.raises(ApplyError, match=unit):
        await sync(target, inv, desired_state({unit: "[Service]\nExecStart=relative/path\n"}))
    # The file was written and recorded pending: the next plan retries it.
    assert inv.owned[unit].meta == {"pending": True}


async def test_shipped_agent_unit_loads(systemd_container: NspawnContainer) -> None:
    ct = systemd_container
    data = (REPO / "systemd/edgefleet-agent.service").read_bytes()
    (ct.unit_dir / "edgefleet-agent.service").write_bytes(data)
    try:
        ct.run("systemctl", "daemon-reload")
        props = ct.show("edgefleet-agent.service", "LoadState", "Type", "WatchdogUSec", "Restart")
        assert props["LoadState"] == "loaded"
        assert props["Type"] == "notify"
        assert props["Restart"] == "always"
        assert props["WatchdogUSec"] != "0"
        verify = subprocess.run(
            [
                *ct.nsenter,
                "systemd-analyze",
                "verify",
                "/etc/systemd/system/edgefleet-agent.service",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        # The binary does not exist in the test container; every setting must be known.
        assert "Unknown" not in verify.stderr, verify.stderr

        # Under the unit's sandbox, what the agent needs works and the rest of /etc is
        # read-only: run a probe in its place (a oneshot, so no restart and no watchdog).
        probe = ct.unit_dir / "edgefleet-agent.service.d" / "probe.conf"
        probe.parent.mkdir()
        probe.write_text(
            "[Service]\nType=oneshot\nRestart=no\nWatchdogSec=0\nExecStartPre=\nExecStart=\n"
            "ExecStart=/bin/sh -c 'echo x > /etc/systemd/system/probe.conf"
            " && echo x > /var/lib/edgefleet/probe && systemctl daemon-reload"
            " && ! touch /etc/probe-ro 2>/dev/null'\n"
        )
        ct.run("systemctl", "daemon-reload")
        ct.run("systemctl", "start", "edgefleet-agent.service")
        assert ct.show("edgefleet-agent.service", "Result")["Result"] == "success"
        assert (ct.unit_dir / "probe.conf").read_text() == "x\n"
    finally:
        for path in ("edgefleet-agent.service.d/probe.conf", "probe.conf"):
            (ct.unit_dir / path).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (ct.unit_dir / "edgefleet-agent.service.d").rmdir()
        os.unlink(ct.unit_dir / "edgefleet-agent.service")
        ct.run("systemctl", "daemon-reload")
