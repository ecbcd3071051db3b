"""The standing fault campaign: randomized, seeded, counted repetitions of the faults an
edge fleet meets (kill -9, broker and hub restarts, a hung or lying Git server, a full
disk), against the real agent and hub processes and real mosquitto and git daemon.

Single scenarios live next to the code they test (test_agent_pipeline, test_report,
test_hub_ingest); here each fault is repeated at random points and every trial is
counted: trials, crashes, lost, corrupted (tests/testbed/faults.py). Each test asserts
0 crashes, 0 lost, 0 corrupted; the counts go to a JSON report (the seed is printed in
the header; ``EDGEFLEET_FAULT_SEED`` replays a run) from which bench/reliability.py
writes the table in RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.atomic import TMP_PREFIX
from agent.outbox import Outbox
from common import wire
from tests.testbed.agentcfg import AgentSetup, write_agent_config
from tests.testbed.faults import Campaign, GitFront, fill
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.gitserver import GitDaemon
from tests.testbed.hubproc import HubProc, Publisher, event_doc, status_doc
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import Watcher
from tests.testbed.tmpfs import small_tmpfs
from tests.testbed.wait import until, wait_until

LINES = 40
"""Lines per generated file: a torn file has fewer, or mixes two versions."""


def repo_path(setup: AgentSetup, name: str) -> str:
    """Repo path placing a file at <root>/<name>."""
    return f"common/files{setup.root}/{name}"


def content(tag: str, name: str) -> str:
    return f"{tag} {name}\n" * LINES


def whole(text: str) -> bool:
    lines = text.splitlines()
    return text.endswith("\n") and len(lines) == LINES and len(set(lines)) == 1


def torn_files(root: Path) -> list[str]:
    """Managed files that are not one whole version. The agent's own temp files
    (``.edgefleet-tmp-*``) may be half written after a kill: they must be gone after the
    next sync, which :func:`node_damage` checks."""
    return [
        str(p) for p in root.rglob("*.conf")
        if not p.name.startswith(TMP_PREFIX) and not whole(_read(p) or "")
    ]  # fmt: skip


def directory_stamps(root: Path) -> dict[Path, int]:
    """mtime of every directory under ``root``: a file renamed into place changes one."""
    return {d: d.stat().st_mtime_ns for d in (root, *root.rglob("*")) if d.is_dir()}


def stamps_changed(root: Path, before: dict[Path, int]) -> bool:
    return directory_stamps(root) != before


def agent_status(setup: AgentSetup) -> dict[str, Any] | None:
    """``status --json``, or None when the state cannot be read (counted as corrupted)."""
    done = setup.cli("status", "--json")
    if done.returncode != 0:
        return None
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def random_change(rng: random.Random, files: dict[str, str], tag: str) -> dict[str, str | None]:
    """Rewrite, delete and add a random share of the files (names relative to the root)."""
    names = sorted(files)
    change: dict[str, str | None] = {
        n: content(tag, n) for n in rng.sample(names, rng.randint(1, len(names) // 2))
    }
    for n in rng.sample(names, rng.randint(0, len(names) // 10)):
        change[n] = None
    for j in range(rng.randint(0, 40)):
        change[f"{tag}/new{j}.conf"] = content(tag, f"{tag}/new{j}.conf")
    return change


def commit(
    repo: FleetRepo, key: SigningKey, setup: AgentSetup, change: dict[str, str | None]
) -> str:
    return repo.commit({repo_path(setup, n): v for n, v in change.items()}, sign=key)


def apply_change(files: dict[str, str], change: dict[str, str | None]) -> None:
    for name, text in change.items():
        if text is None:
            files.pop(name, None)
        else:
            files[name] = text


def node_damage(setup: AgentSetup, files: dict[str, str], head: str) -> tuple[int, int, str]:
    """(lost, corrupted, evidence) of a node that should be synced at ``head`` with ``files``."""
    root = setup.root
    notes: list[str] = []
    lost = [n for n, text in files.items() if _read(root / n) != text]
    on_disk = {str(p) for p in root.rglob("*") if p.is_file()}
    expected = {str(root / n) for n in files}
    st = agent_status(setup)
    bad: list[str] = sorted(on_disk - expected)  # orphans and leftovers (.edgefleet-tmp-*)
    if st is None:
        bad.append("state unreadable")
    else:
        if st["applied"] != head:
            lost.append(f"applied {st['applied']} != {head}")
        if st["interrupted_apply"] is not None:
            bad.append(f"interrupted_apply {st['interrupted_apply']}")
        owned = {item["subject"] for item in st["inventory"]}
        bad += [f"not in inventory: {p}" for p in sorted(on_disk - owned)]
        bad += [f"owned but absent: {p}" for p in sorted(owned - on_disk)]
    if lost:
        notes.append(f"lost {lost[:5]}")
    if bad:
        notes.append(f"corrupted {bad[:5]}")
    return len(lost), len(bad), "; ".join(notes)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


FINALIZER = "Exception ignored in"
"""How Python reports an exception in a finalizer (``__del__``): noise, not a crash."""


def traceback_in(*outputs: str) -> int:
    """1 if any output has a traceback other than a finalizer's (see :data:`FINALIZER`)."""
    return int(any(o.count("Traceback (most recent") > o.count(FINALIZER) for o in outputs))


# -- kill -9 of the agent mid-apply ---------------------------------------------------------


def test_agent_kill_9_at_random_points_of_an_apply(
    campaign: Campaign, tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    fault = "agent kill -9 mid-apply"
    rng = campaign.rng(fault)
    agent = write_agent_config(
        tmp_path / "agent", fleet_repo.url, allowed_signers=signing_key.allowed_signers
    )
    files = {f"d{i % 7}/f{i}.conf": content("base", f"d{i % 7}/f{i}.conf") for i in range(120)}
    commit(fleet_repo, signing_key, agent, dict(files))
    first = time.monotonic()
    done = agent.cli("sync", "--once")
    assert done.returncode == 0, done.stdout + done.stderr
    # Kill delays are fractions of a full sync here, so they land across the whole run
    # (start, fetch, verify, apply, state save) however fast this machine is today.
    full_sync = time.monotonic() - first

    for trial in range(campaign.trials(10)):
        started = time.monotonic()
        change = random_change(rng, files, f"t{trial}")
        head = commit(fleet_repo, signing_key, agent, change)
        apply_change(files, change)
        dirs = directory_stamps(agent.root)
        proc = agent.popen("sync", "--once")
        try:
            if trial % 2:  # anywhere in the run: start, fetch, verify, apply, state save
                time.sleep(rng.uniform(0.2, 1.0) * full_sync)  # the fault's timing, not a wait
            else:  # inside the apply: once the first file lands, a little later
                moved = functools.partial(stamps_changed, agent.root, dirs)
                with contextlib.suppress(AssertionError):  # a slow start: still a kill
                    wait_until(moved, 5 * full_sync, "the apply's first file", interval=0.005)
                time.sleep(rng.uniform(0.0, 0.3) * full_sync)
        finally:
            proc.send_signal(signal.SIGKILL)
            killed_out, _ = proc.communicate()
        torn = torn_files(agent.root)
        st = agent_status(agent)
        if proc.returncode == -signal.SIGKILL and st and st["interrupted_apply"]:
            campaign.observe(fault, "killed mid-apply")

        done = agent.cli("sync", "--once")
        lost, corrupted, evidence = node_damage(agent, files, head)
        crashed = int(done.returncode != 0) + traceback_in(killed_out, done.stdout, done.stderr)
        campaign.record(
            fault, started, crashes=crashed, lost=lost, corrupted=corrupted + len(torn),
            note=f"torn {torn[:5]}; {evidence}; resume rc {done.returncode}: "
                 f"{done.stdout[-500:]}{done.stderr[-1000:]}",
        )  # fmt: skip
    campaign.check(fault)


# -- a Git server that hangs or answers garbage ------------------------------------------


def test_git_server_hung_or_answering_garbage(
    campaign: Campaign,
    tmp_path: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    git_front_factory: list[GitFront],
) -> None:
    fault = "Git server hung or answering garbage"
    rng = campaign.rng(fault)
    daemon = GitDaemon(fleet_repo.root, tmp_path / "git-daemon.log")
    daemon.start()
    try:
        front = GitFront(daemon.port, rng)
        git_front_factory.append(front)
        agent = write_agent_config(
            tmp_path / "agent", front.url(), allowed_signers=signing_key.allowed_signers
        )
        text = agent.config.read_text()  # a short Git timeout: a hung server costs 2 s
        agent.config.write_text(text.replace("[git]\n", "[git]\ntimeout = 2\n", 1))
        files = {f"f{i}.conf": content("base", f"f{i}.conf") for i in range(20)}
        head = commit(fleet_repo, signing_key, agent, dict(files))
        done = agent.cli("sync", "--once")
        assert done.returncode == 0, done.stdout + done.stderr

        # Every misbehaviour once per round, in a seeded order.
        modes = [m for _ in range(campaign.trials(1)) for m in rng.sample(GitFront.MODES, 5)]
        for trial, mode in enumerate(modes):
            started = time.monotonic()
            change = random_change(rng, files, f"t{trial}")
            new_head = commit(fleet_repo, signing_key, agent, change)
            spare = rng.randint(0, 1)  # break the ls-remote, or only the fetch after it
            front.set(mode, spare)
            failed = agent.cli("sync", "--once")
            campaign.observe(fault, f"{mode} on {('ls-remote', 'fetch')[spare]}")
            # State "error" is the transient one (retried at the next poll); a lying
            # server must never lead to "refused" or "failed" (terminal for that commit).
            reported = failed.returncode == 1 and failed.stdout.startswith("error: ")
            kept = node_damage(agent, files, head)  # the last good state, untouched
            front.set("forward")
            done = agent.cli("sync", "--once")
            apply_change(files, change)
            head = new_head
            recovered = node_damage(agent, files, head)
            outputs = (failed.stdout, failed.stderr, done.stdout, done.stderr)
            campaign.record(
                fault, started,
                crashes=int(not reported) + int(done.returncode != 0) + traceback_in(*outputs),
                lost=kept[0] + recovered[0], corrupted=kept[1] + recovered[1],
                note=f"{mode}: kept {kept[2]}; recovered {recovered[2]}; "
                     + " | ".join(o[-800:] for o in outputs),
            )  # fmt: skip
    finally:
        daemon.stop()
    campaign.check(fault)


# -- kill -9 of the hub mid-burst -----------------------------------------------------------


def burst(pub: Publisher, docs: list[tuple[str, dict[str, Any], bool]]) -> threading.Thread:
    """Publish (topic, doc, retain) QoS 1 as fast as paho goes, in a thread; join to wait."""

    def run() -> None:
        infos = [pub.client.publish(t, wire.encode(d), qos=1, retain=r) for t, d, r in docs]
        for info in infos:
            info.wait_for_publish(30)

    thread = threading.Thread(target=run, name="burst")
    thread.start()
    return thread


def hub_db_seqs(hub: HubProc) -> dict[str, int]:
    """What a dead hub had committed (its database, read directly)."""
    with sqlite3.connect(hub.directory / "hub.db") as db:
        return dict(db.execute("SELECT node, seq FROM nodes").fetchall())


def hub_damage(hub: HubProc, last: dict[str, int], events: dict[str, int]) -> tuple[int, int, str]:
    """(lost, corrupted, evidence): every node at its last seq, every event once."""
    nodes = {n["node"]: n["seq"] for n in hub.get("/api/v1/nodes?limit=1000")["nodes"]}
    lost = [f"{n}: seq {nodes.get(n)} != {seq}" for n, seq in last.items() if nodes.get(n) != seq]
    dup: list[str] = []
    for node, count in events.items():
        seqs = [e["seq"] for e in hub.get(f"/api/v1/events?node={node}&limit=1000")["events"]]
        missing = set(range(1, count + 1)) - set(seqs)
        lost += [f"{node}: event {s}" for s in sorted(missing)]
        dup += [f"{node}: event {s} twice" for s in set(seqs) if seqs.count(s) > 1]
    return len(lost), len(dup), f"lost {lost[:5]}; duplicated {dup[:5]}"


def new_log(hub: HubProc, offset: int) -> str:
    """What the hub logged since ``offset`` (all of its runs append to one file)."""
    with hub.log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def test_hub_kill_9_mid_burst_of_statuses(
    campaign: Campaign, tmp_path: Path, hub_on: Callable[..., HubProc]
) -> None:
    fault = "hub kill -9 mid-burst"
    rng = campaign.rng(fault)
    # As docs/operator-guide.md asks: no cap on what the broker queues for the hub.
    broker = Mosquitto(tmp_path / "broker", extra="max_queued_messages 0\n")
    broker.start()
    pub = Publisher(broker).connect(broker)
    try:
        hub = hub_on(broker)
        last = dict.fromkeys((f"b{i}" for i in range(20)), 0)
        events = dict.fromkeys(last, 0)
        for _ in range(campaign.trials(4)):
            started, log_from = time.monotonic(), hub.log.stat().st_size
            docs: list[tuple[str, dict[str, Any], bool]] = []
            for _ in range(rng.randint(40, 80)):
                for node in last:
                    last[node] += 1
                    docs.append((wire.status_topic(node), status_doc(node, last[node]), True))
                    if rng.random() < 0.25:
                        events[node] += 1
                        docs.append((wire.events_topic(node), event_doc(node, events[node]), False))
            sending = burst(pub, docs)
            time.sleep(rng.uniform(0.0, 0.6))  # the fault's timing, not a wait
            hub.kill()
            if any(seq < last[n] for n, seq in hub_db_seqs(hub).items()):
                campaign.observe(fault, "killed before the burst was committed")
            sending.join()
            hub.start()
            with contextlib.suppress(AssertionError):  # a timeout is counted below, as lost
                hub.wait_for(lambda: hub_damage(hub, last, events)[0] == 0, timeout=30)
            lost, duplicated, evidence = hub_damage(hub, last, events)
            campaign.record(
                fault, started, crashes=traceback_in(new_log(hub, log_from)), lost=lost,
                corrupted=duplicated, note=evidence,
            )  # fmt: skip
    finally:
        pub.close()
        broker.stop()
    campaign.check(fault)


# -- broker restart under a running agent and hub -----------------------------------------


async def settle(read: Callable[[], object], want: object, timeout: float) -> object:
    """Wait up to ``timeout`` for ``read() == want``; return what it reads then (a miss is
    counted by the caller, not raised)."""
    with contextlib.suppress(AssertionError):
        await until(lambda: read() == want, timeout)
    return read()


async def retained_seq(broker: Mosquitto, node: str) -> int:
    watcher = Watcher(broker.port, [wire.status_topic(node)])
    try:
        msg = await watcher.next()
        assert msg.retain
        seq: int = json.loads(msg.payload)["seq"]
        return seq
    finally:
        watcher.close()


async def test_broker_restart_while_agent_and_hub_run(
    campaign: Campaign,
    tmp_path: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    hub_on: Callable[..., HubProc],
) -> None:
    fault = "broker restart"
    rng = campaign.rng(fault)
    node = "restarts"
    # The shipped broker config: persistence on, no cap on what is queued for the hub.
    directory = tmp_path / "broker"
    broker = Mosquitto(
        directory,
        extra=f"persistence true\npersistence_location {directory}/\nmax_queued_messages 0\n",
    )
    broker.start()
    # mosquitto (2.0.11 measured) does not restore shared subscriptions after a restart:
    # what nodes publish before the hub subscribes again would be lost (RELIABILITY.md).
    hub = hub_on(broker, mqtt_extra="shared = false")
    agent = write_agent_config(
        tmp_path / "agent", fleet_repo.url, node=node, mqtt_url=broker.url,
        allowed_signers=signing_key.allowed_signers, interval=1, heartbeat=1,
    )  # fmt: skip

    def hub_node() -> dict[str, Any]:
        found: dict[str, Any] = hub.try_get(f"/api/v1/nodes/{node}")
        return found

    def hub_events() -> list[int]:
        return [e["seq"] for e in hub.get(f"/api/v1/events?node={node}&limit=1000")["events"]]

    files = {f"f{i}.conf": content("base", f"f{i}.conf") for i in range(10)}
    head = commit(fleet_repo, signing_key, agent, dict(files))
    daemon = agent.popen("run")
    out = ""
    try:
        await until(lambda: hub_node().get("applied") == head, 30, "the first apply at the hub")
        trials = campaign.trials(4)
        counted: set[int] = set()
        for trial in range(trials):
            started, log_from = time.monotonic(), hub.log.stat().st_size
            change = random_change(rng, files, f"t{trial}")
            head = commit(fleet_repo, signing_key, agent, change)
            apply_change(files, change)
            await asyncio.sleep(rng.uniform(0.0, 1.5))  # lands before, during or after the apply
            broker.stop()
            await asyncio.sleep(rng.uniform(0.0, 1.0))  # the outage
            broker.start()
            lost: list[str] = []
            shown = await settle(lambda: hub_node().get("applied"), head, 30)
            if shown != head:
                lost.append(f"hub shows applied {shown}, not {head}")
            crashes = int(daemon.poll() is not None) + traceback_in(new_log(hub, log_from))
            sent = 0
            if trial == trials - 1:  # the end: stop the agent, compare with what it sent
                daemon.send_signal(signal.SIGTERM)
                out, _ = daemon.communicate(timeout=20)
                crashes += int(daemon.returncode != 0) + traceback_in(out)
                outbox = Outbox(agent.state_dir / "outbox", 10_000)
                sent = outbox.last_seq
                outbox.close()
                final = await retained_seq(broker, node)
                seq = await settle(lambda: hub_node().get("seq"), final, 15)
                if seq != final:
                    lost.append(f"hub seq {seq} != last status seq {final}")
                await settle(lambda: max(hub_events(), default=0), sent, 15)
            seqs = hub_events()
            # Every event up to the newest at the hub (the agent's newest at the end).
            top = sent if trial == trials - 1 else max(seqs, default=0)
            missing = set(range(1, top + 1)) - set(seqs) - counted  # each loss counted once
            counted |= missing
            lost += [f"event {s} missing" for s in sorted(missing)]
            duplicated = len(seqs) - len(set(seqs))
            campaign.record(
                fault, started, crashes=crashes, lost=len(lost), corrupted=duplicated,
                note=f"{lost[:5]}; {duplicated} duplicated events; agent: {out[-1500:]}",
            )  # fmt: skip
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
        broker.stop()
    campaign.check(fault)


@pytest.mark.parametrize("shared", [True, False])
def test_what_a_broker_restart_keeps_for_a_stopped_hub(
    tmp_path: Path, hub_on: Callable[..., HubProc], shared: bool
) -> None:
    """Pinned broker behaviour behind the campaign's plain subscription: mosquitto keeps
    the hub's session across its own restart, but not a shared subscription in it, so
    what nodes publish before the hub subscribes again is lost with ``shared = true``."""
    directory = tmp_path / "broker"
    broker = Mosquitto(directory, extra=f"persistence true\npersistence_location {directory}/\n")
    broker.start()
    pub = Publisher(broker)
    try:
        hub = hub_on(broker, mqtt_extra=f"shared = {str(shared).lower()}")
        hub.stop()
        broker.stop()
        broker.start()
        pub.connect(broker)
        pub.event(event_doc("n1", 1))  # while the hub is down, after the broker restart
        hub.start()
        pub.event(event_doc("n1", 2))  # after the hub subscribed again: always delivered
        hub.wait_for(lambda: 2 in [e["seq"] for e in hub.get("/api/v1/events")["events"]])
        seqs = sorted(e["seq"] for e in hub.get("/api/v1/events")["events"])
        assert seqs == ([2] if shared else [1, 2])
    finally:
        pub.close()
        broker.stop()


# -- a full disk ------------------------------------------------------------------------------


def test_agent_disk_full(
    campaign: Campaign, tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    fault = "disk full on the agent"
    rng = campaign.rng(fault)
    with small_tmpfs(tmp_path / "disk", "4m") as disk:  # state dir and target root
        agent = write_agent_config(
            disk / "agent", fleet_repo.url, allowed_signers=signing_key.allowed_signers,
            # The min_free guard would refuse before writing anything; this campaign is
            # about a disk that fills anyway (another writer, a guard set too low).
            extra="[activation]\nmin_free = 0\n",
        )  # fmt: skip
        files = {f"f{i}.conf": content("base", f"f{i}.conf") for i in range(30)}
        head = commit(fleet_repo, signing_key, agent, dict(files))
        done = agent.cli("sync", "--once")
        assert done.returncode == 0, done.stdout + done.stderr

        for trial in range(campaign.trials(6)):
            started = time.monotonic()
            change = random_change(rng, files, f"t{trial}")
            head = commit(fleet_repo, signing_key, agent, change)
            apply_change(files, change)
            filler = fill(disk, rng.randint(0, 160 * 1024))
            full = agent.cli("sync", "--once")
            torn = torn_files(agent.root)
            readable = agent_status(agent) is not None  # state readable on the full disk
            if full.returncode == 0:
                campaign.observe(fault, "enough space left")
                reported = True
            else:
                campaign.observe(fault, "sync stopped by the full disk")
                reported = full.returncode == 1 and "No space left" in full.stdout + full.stderr
            filler.unlink()
            done = agent.cli("sync", "--once")
            lost, corrupted, evidence = node_damage(agent, files, head)
            outputs = (full.stdout, full.stderr, done.stdout, done.stderr)
            if any(FINALIZER in o for o in outputs):  # RELIABILITY.md, findings
                campaign.observe(fault, "finalizer traceback (dulwich lock file)")
            campaign.record(
                fault, started,
                crashes=int(not reported) + int(done.returncode != 0) + traceback_in(*outputs),
                lost=lost, corrupted=corrupted + len(torn) + int(not readable),
                note=f"torn {torn[:5]}; readable {readable}; {evidence}; "
                     + " | ".join(o[-800:] for o in outputs),
            )  # fmt: skip
    campaign.check(fault)


def hub_metric(hub: HubProc, name: str) -> float:
    for line in hub.get("/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"metric {name} not exposed")


def refused_or_stored(
    hub: HubProc, errors_before: float, last: dict[str, int], events: dict[str, int]
) -> bool:
    if hub_metric(hub, "edgefleet_hub_batch_errors_total") > errors_before:
        return True
    return hub_damage(hub, last, events)[0] == 0


def test_hub_disk_full(campaign: Campaign, tmp_path: Path) -> None:
    fault = "disk full on the hub"
    rng = campaign.rng(fault)
    broker = Mosquitto(tmp_path / "broker", extra="max_queued_messages 0\n")
    broker.start()
    pub = Publisher(broker).connect(broker)
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        hub = HubProc(tmp_path / "hub", broker, database_dir=disk)
        try:
            hub.start()
            last = dict.fromkeys((f"d{i}" for i in range(20)), 0)
            events = dict.fromkeys(last, 0)
            for _ in range(campaign.trials(3)):
                started, log_from = time.monotonic(), hub.log.stat().st_size
                errors_before = hub_metric(hub, "edgefleet_hub_batch_errors_total")
                filler = fill(disk, rng.randint(0, 64 * 1024))
                docs: list[tuple[str, dict[str, Any], bool]] = []
                for _ in range(rng.randint(20, 60)):
                    for node in last:
                        last[node] += 1
                        docs.append((wire.status_topic(node), status_doc(node, last[node]), True))
                        events[node] += 1
                        docs.append((wire.events_topic(node), event_doc(node, events[node]), False))
                burst(pub, docs).join()
                with contextlib.suppress(AssertionError):  # refused for space, or stored
                    hub.wait_for(
                        functools.partial(refused_or_stored, hub, errors_before, last, events),
                        timeout=20,
                    )
                if hub_metric(hub, "edgefleet_hub_batch_errors_total") > errors_before:
                    campaign.observe(fault, "batch refused for space")
                alive = hub.proc is not None and hub.proc.poll() is None
                filler.unlink()
                with contextlib.suppress(AssertionError):
                    hub.wait_for(lambda: hub_damage(hub, last, events)[0] == 0, timeout=30)
                lost, duplicated, evidence = hub_damage(hub, last, events)
                with sqlite3.connect(f"file:{disk / 'hub.db'}?mode=ro", uri=True) as db:
                    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
                campaign.record(
                    fault, started, crashes=int(not alive) + traceback_in(new_log(hub, log_from)),
                    lost=lost, corrupted=duplicated + int(integrity != "ok"),
                    note=f"{evidence}; integrity {integrity}; alive {alive}",
                )  # fmt: skip
        finally:
            hub.stop()
            pub.close()
            broker.stop()
    campaign.check(fault)
