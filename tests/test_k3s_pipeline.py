"""The k3s target through the whole agent: signed Git commits -> ``edgefleet-agent sync --once``.

Every test runs the real CLI as a subprocess against the real API server of the
session fixture ``kube`` (tests/testbed/kube.py: kube-apiserver v1.20.2, no kubelet,
so a Deployment with replicas 0 becomes Available and one with replicas 1 never does).
With EDGEFLEET_K3S_KUBECONFIG set the same tests run against a real k3s; the outage
test is skipped there (it stops and restarts the API server). Each test gets its own
namespaces, created by the agent from Git and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient, AppsV1Api, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from tests.testbed.agentcfg import AgentSetup, write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.kube import Kube, cm, deploy

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "edgefleet.io/source"


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def manifests(*objs: Mapping[str, Any], path: str = "common") -> dict[str, str]:
    return {f"{path}/manifests/app.yaml": yaml.safe_dump_all(list(objs))}


def k3s_agent(
    directory: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    kube: Kube,
    namespaces: list[str],
    *,
    path: str = "common",
    drift_mode: str = "correct",
    health_timeout: float | None = None,
    interval: float = 60,
) -> AgentSetup:
    extra = (
        "[targets.k3s]\n"
        "enabled = true\n"
        f'kubeconfig = "{kube.kubeconfig}"\n'
        f"namespaces = {json.dumps(namespaces)}\n"
    )
    setup = write_agent_config(
        directory,
        fleet_repo.url,
        paths=(path,),
        allowed_signers=signing_key.allowed_signers,
        drift_mode=drift_mode,
        extra=extra,
        interval=interval,
    )
    if interval < 60:  # the drift loop too
        text = setup.config.read_text()
        setup.config.write_text(text.replace("interval = 3600\n", f"interval = {interval}\n"))
    if health_timeout is not None:
        text = setup.config.read_text()
        assert "[health]\ntimeout = 10\n" in text
        text = text.replace("[health]\ntimeout = 10\n", f"[health]\ntimeout = {health_timeout}\n")
        setup.config.write_text(text)
    return setup


async def sync(setup: AgentSetup) -> subprocess.CompletedProcess[str]:
    """``sync --once`` off the event loop, so the test's own API client stays responsive."""
    return await asyncio.to_thread(setup.cli, "sync", "--once")


def status(setup: AgentSetup) -> dict[str, Any]:
    done = setup.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def k3s_inventory(setup: AgentSetup) -> set[str]:
    return {i["subject"] for i in status(setup)["inventory"] if i["target"] == "k3s"}


def out(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


@pytest.fixture
async def new_ns(kapi: ApiClient) -> AsyncIterator[Callable[[], str]]:
    """Unique namespace names for one test; whatever exists at the end is deleted."""
    names: list[str] = []

    def make() -> str:
        names.append(f"p-{uuid.uuid4().hex[:10]}")
        return names[-1]

    yield make
    core = CoreV1Api(kapi)
    for name in names:
        with contextlib.suppress(ApiException):
            await core.delete_namespace(name)


async def read_cm(kapi: ApiClient, ns: str, name: str) -> Any | None:
    try:
        return await CoreV1Api(kapi).read_namespaced_config_map(name, ns)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


async def read_deploy(kapi: ApiClient, ns: str, name: str) -> Any | None:
    try:
        return await AppsV1Api(kapi).read_namespaced_deployment(name, ns)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


async def test_create_and_update(
    tmp_path: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    kube: Kube,
    kapi: ApiClient,
    new_ns: Callable[[], str],
) -> None:
    ns = new_ns()
    agent = k3s_agent(tmp_path / "a", fleet_repo, signing_key, kube, [ns])
    c1 = fleet_repo.commit(
        manifests(namespace(ns), cm(ns, "app", mode="a"), deploy(ns, "web")), sign=signing_key
    )
    done = await sync(agent)
    assert done.returncode == 0, out(done)
    assert done.stdout.startswith("synced:") and "k3s: 3 created" in done.stdout
    live = await read_cm(kapi, ns, "app")
    assert live is not None and live.data == {"mode": "a"}
    assert live.metadata.labels["app.kubernetes.io/managed-by"] == "edgefleet"
    assert live.metadata.annotations[SOURCE] == f"node-1@{c1}"
    dep = await read_deploy(kapi, ns, "web")
    assert dep is not None and dep.status.available_replicas in (None, 0)
    st = status(agent)
    assert st["applied"] == c1 and st["last_good"] == c1
    assert k3s_inventory(agent) == {
        f"core/Namespace//{ns}",
        f"core/ConfigMap/{ns}/app",
        f"apps/Deployment/{ns}/web",
    }

    c2 = fleet_repo.commit(
        manifests(namespace(ns), cm(ns, "app", mode="b"), deploy(ns, "web")), sign=signing_key
    )
    done = await sync(agent)
    assert done.returncode == 0, out(done)
    assert "k3s: 1 configured, 2 unchanged" in done.stdout
    live = await read_cm(kapi, ns, "app")
    assert live is not None and live.data == {"mode": "b"}
    assert live.metadata.annotations[SOURCE] == f"node-1@{c2}"
    # Unchanged objects are not rewritten: the Deployment keeps the first commit's source.
    dep = await read_deploy(kapi, ns, "web")
    assert dep is not None and dep.metadata.annotations[SOURCE] == f"node-1@{c1}"
    assert status(agent)["applied"] == c2

    # A no-op sync writes nothing, neither to the cluster nor to the state file.
    state_file = agent.state_dir / "state.json"
    before = state_file.stat().st_mtime_ns, live.metadata.resource_version
    done = await sync(agent)
    assert done.returncode == 0, out(done)
    live = await read_cm(kapi, ns, "app")
    assert live is not None
    assert (state_file.stat().st_mtime_ns, live.metadata.resource_version) == before


async def test_prune_on_removal_from_git(
    tmp_path: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    kube: Kube,
    kapi: ApiClient,
    new_ns: Callable[[], str],
) -> None:
    keep, drop = new_ns(), new_ns()
    agent = k3s_agent(tmp_path / "a", fleet_repo, signing_key, kube, [keep, drop])
    fleet_repo.commit(
        manifests(
            namespace(keep),
            namespace(drop),
            cm(keep, "app", mode="a"),
            cm(keep, "old", x="1"),
            deploy(keep, "web"),
            cm(drop, "other"),
        ),
        sign=signing_key,
    )
    done = await sync(agent)
    assert done.returncode == 0, out(done)

    c2 = fleet_repo.commit(manifests(namespace(keep), cm(keep, "app", mode="a")), sign=signing_key)
    done = await sync(agent)
    assert done.returncode == 0, out(done)
    assert "k3s: 2 unchanged, 4 deleted" in done.stdout
    assert await read_cm(kapi, keep, "old") is None
    assert await read_deploy(kapi, keep, "web") is None
    assert await read_cm(kapi, keep, "app") is not None
    ns = await CoreV1Api(kapi).read_namespace(drop)  # deleting: Terminating until emptied
    assert ns.metadata.deletion_timestamp is not None
    assert k3s_inventory(agent) == {f"core/Namespace//{keep}", f"core/ConfigMap/{keep}/app"}
    assert status(agent)["applied"] == c2


async def test_commit_with_one_invalid_object_is_refused(
    tmp_path: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    kube: Kube,
    kapi: ApiClient,
    new_ns: Callable[[], str],
) -> None:
    ns, extra_ns = new_ns(), new_ns()
    agent = k3s_agent(tmp_path / "a", fleet_repo, signing_key, kube, [ns, extra_ns])
    c1 = fleet_repo.commit(manifests(namespace(ns), cm(ns, "app", mode="a")), sign=signing_key)
    assert (await sync(agent)).returncode == 0

    bad = deploy(ns, "broken")
    bad["spec"]["selector"]["matchLabels"] = {"app": "something-else"}  # must match the pods
    c2 = fleet_repo.commit(
        manifests(
            namespace(ns),
            namespace(extra_ns),
            cm(ns, "app", mode="b"),
            cm(ns, "fresh"),
            cm(extra_ns, "fresh"),
            bad,
        ),
        sign=signing_key,
    )
    done = await sync(agent)
    assert done.returncode == 1, out(done)
    assert "refused" in done.stdout and "dry-run rejected" in done.stdout
    assert f"apps/Deployment/{ns}/broken" in done.stdout and "selector" in done.stdout
    # Nothing of that commit was applied.
    live = await read_cm(kapi, ns, "app")
    assert live is not None and live.data == {"mode": "a"}
    assert await read_cm(kapi, ns, "fresh") is None
    assert await read_deploy(kapi, ns, "broken") is None
    with pytest.raises(ApiException) as err:
        await CoreV1Api(kapi).read_namespace(extra_ns)
    assert err.value.status == 404
    st = status(agent)
    assert st["applied"] == c1 and st["last_attempted"] == c1
    assert st["bad_commits"] == [] and c2 not in st["bad_commits"]
    assert k3s_inventory(agent) == {f"core/Namespace//{ns}", f"core/ConfigMap/{ns}/app"}


async def test_unhealthy_deployment_rolls_back(
    tmp_path: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    kube: Kube,
    kapi: ApiClient,
    new_ns: Callable[[], str],
) -> None:
    ns = new_ns()
    agent = k3s_agent(tmp_path / "a", fleet_repo, signing_key, kube, [ns], health_timeout=3)
    c1 = fleet_repo.commit(
        manifests(namespace(ns), cm(ns, "app", mode="good"), deploy(ns, "web")),
        sign=signing_key,
    )
    assert (await sync(agent)).returncode == 0

    c2 = fleet_repo.commit(
        manifests(
            namespace(ns),
            cm(ns, "app", mode="bad"),
            cm(ns, "extra"),
            deploy(ns, "web"),
            deploy(ns, "stuck", replicas=1),  # no kubelet / no image: never available
        ),
        sign=signing_key,
    )
    start = time.monotonic()
    done = await sync(agent)
    assert done.returncode == 1, out(done)
    assert time.monotonic() - start < 30
    assert done.stdout.startswith("failed:"), done.stdout
    assert f"apps/Deployment/{ns}/stuck" in done.stdout and "of 1 replicas" in done.stdout
    assert f"rolled back to {c1[:12]}" in done.stdout
    # The previous objects are back, the bad commit's new objects are gone.
    live = await read_cm(kapi, ns, "app")
    assert live is not None and live.data == {"mode": "good"}
    assert live.metadata.annotations[SOURCE] == f"node-1@{c1}"
    assert await read_cm(kapi, ns, "extra") is None
    assert await read_deploy(kapi, ns, "stuck") is None
    assert await read_deploy(kapi, ns, "web") is not None
    st = status(agent)
    assert st["bad_commits"] == [c2]
    assert st["applied"] == c1 and st["last_good"] == c1 and st["last_attempted"] == c2
    assert st["interrupted_apply"] is None
    assert k3s_inventory(agent) == {
        f"core/Namespace//{ns}",
        f"core/ConfigMap/{ns}/app",
        f"apps/Deployment/{ns}/web",
    }

    # The bad commit is not retried while the branch stays on it.
    done = await sync(agent)
    assert done.returncode == 1, out(done)
    assert "failed on this node before" in done.stdout
    assert await read_deploy(kapi, ns, "stuck") is None
    assert await read_cm(kapi, ns, "extra") is None
    assert status(agent)["applied"] == c1

    # A fixed commit on top is applied.
    c3 = fleet_repo.commit(
        manifests(namespace(ns), cm(ns, "app", mode="fixed"), deploy(ns, "web")),
        sign=signing_key,
    )
    done = await sync(agent)
    assert done.returncode == 0, out(done)
    st = status(agent)
    assert st["applied"] == c3 and st["bad_commits"] == [c2]


async def test_drift_corrected_or_only_reported(
    tmp_path: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    kube: Kube,
    kapi: ApiClient,
    new_ns: Callable[[], str],
) -> None:
    fixing_ns, reporting_ns = new_ns(), new_ns()
    fixing = k3s_agent(tmp_path / "a", fleet_repo, signing_key, kube, [fixing_ns], path="a")
    reporting = k3s_agent(
        tmp_path / "b",
        fleet_repo,
        signing_key,
        kube,
        [reporting_ns],
        path="b",
        drift_mode="report",
    )
    files: dict[str, str] = {}
    for ns, path in ((fixing_ns, "a"), (reporting_ns, "b")):
        objs = (namespace(ns), cm(ns, "app", mode="git"), cm(ns, "gone"), deploy(ns, "web"))
        files |= manifests(*objs, path=path)
    fleet_repo.commit(files, sign=signing_key)
    core, apps = CoreV1Api(kapi), AppsV1Api(kapi)
    for setup, ns in ((fixing, fixing_ns), (reporting, reporting_ns)):
        done = await sync(setup)
        assert done.returncode == 0, out(done)
        # By hand: scale, edit a ConfigMap, delete an object.
        await apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 2}})
        await core.patch_namespaced_config_map("app", ns, {"data": {"mode": "by hand"}})
        await core.delete_namespaced_config_map("gone", ns)

    done = await sync(fixing)
    assert done.returncode == 0, out(done)
    assert "synced" in done.stdout
    dep = await read_deploy(kapi, fixing_ns, "web")
    assert dep is not None and dep.spec.replicas == 0
    live = await read_cm(kapi, fixing_ns, "app")
    assert live is not None and live.data == {"mode": "git"}
    assert await read_cm(kapi, fixing_ns, "gone") is not None

    done = await sync(reporting)
    assert done.returncode == 1, out(done)
    assert done.stdout.startswith("drifted:"), done.stdout
    lines = done.stdout.splitlines()
    expected = [
        ("modified", f"k3s:apps/Deployment/{reporting_ns}/web", ".spec.replicas"),
        ("modified", f"k3s:core/ConfigMap/{reporting_ns}/app", ".data.mode"),
        ("missing", f"k3s:core/ConfigMap/{reporting_ns}/gone", "deleted"),
    ]
    for kind, subject, detail in expected:
        assert any(
            line.split()[:3] == ["drift", kind, subject] and detail in line for line in lines
        ), (kind, subject, done.stdout)
    # Reported, not touched.
    dep = await read_deploy(kapi, reporting_ns, "web")
    assert dep is not None and dep.spec.replicas == 2
    live = await read_cm(kapi, reporting_ns, "app")
    assert live is not None and live.data == {"mode": "by hand"}
    assert await read_cm(kapi, reporting_ns, "gone") is None


def wait_for_applying(setup: AgentSetup, commit: str, proc: subprocess.Popen[str]) -> None:
    """Return as soon as the agent's state says it started applying ``commit``."""
    path = setup.state_dir / "state.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            if json.loads(path.read_bytes()).get("applying") == commit:
                return
        time.sleep(0.002)
    raise AssertionError(f"agent never started applying {commit[:12]}: {proc.poll()}")


async def test_apiserver_down_during_sync_loses_nothing(
    tmp_path: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    kube: Kube,
    kapi: ApiClient,
    new_ns: Callable[[], str],
) -> None:
    if kube.external:
        pytest.skip("stops the API server; not possible with an external cluster")
    ns = new_ns()
    agent = k3s_agent(tmp_path / "a", fleet_repo, signing_key, kube, [ns])
    old = [cm(ns, f"old-{i}", i=str(i)) for i in range(3)]
    c1 = fleet_repo.commit(manifests(namespace(ns), *old), sign=signing_key)
    assert (await sync(agent)).returncode == 0
    new = [cm(ns, f"new-{i}", i=str(i)) for i in range(30)]
    c2 = fleet_repo.commit(manifests(namespace(ns), old[0], *new), sign=signing_key)

    # Freeze the agent the moment it starts applying, take the API server away under it.
    proc = agent.popen("sync", "--once")
    try:
        await asyncio.to_thread(wait_for_applying, agent, c2, proc)
        proc.send_signal(signal.SIGSTOP)
        kube.stop()
        proc.send_signal(signal.SIGCONT)
        output, _ = await asyncio.to_thread(proc.communicate, timeout=90)
    except BaseException:
        proc.kill()
        proc.communicate()
        kube.start()
        raise
    try:
        assert proc.returncode == 1, output
        assert "Traceback" not in output
        assert "unreachable" in output
        assert f"{c2[:12]}" in output
        st = status(agent)
        # Not a bad commit: the outage is transient, the commit is retried.
        assert st["bad_commits"] == []
        assert st["applied"] == c1 and st["last_good"] == c1
        # Whatever was written is in the inventory; the old objects are still owned.
        owned = k3s_inventory(agent)
        assert {f"core/ConfigMap/{ns}/old-{i}" for i in range(3)} <= owned
        # While the API server is down a sync fails clearly, again without harm.
        done = await sync(agent)
        assert done.returncode == 1 and "unreachable" in out(done), out(done)
        assert "Traceback" not in out(done)
        assert status(agent)["bad_commits"] == []
    finally:
        kube.start()

    done = await sync(agent)
    assert done.returncode == 0, out(done)
    st = status(agent)
    assert st["applied"] == c2 and st["interrupted_apply"] is None
    names = {c.metadata.name for c in (await CoreV1Api(kapi).list_namespaced_config_map(ns)).items}
    assert {f"new-{i}" for i in range(30)} | {"old-0"} <= names
    assert not {"old-1", "old-2"} & names
    assert k3s_inventory(agent) == {f"core/Namespace//{ns}", f"core/ConfigMap/{ns}/old-0"} | {
        f"core/ConfigMap/{ns}/new-{i}" for i in range(30)
    }


def read_until(proc: subprocess.Popen[str], *needles: str) -> str:
    """Daemon output up to the first line containing each needle (in any order)."""
    assert proc.stdout is not None
    seen: list[str] = []
    missing = set(needles)
    while missing:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"agent exited ({proc.wait()}) before {missing}:\n{''.join(seen)}")
        seen.append(line)
        missing = {n for n in missing if n not in line}
    return "".join(seen)


async def test_daemon_survives_apiserver_outage(
    tmp_path: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    kube: Kube,
    kapi: ApiClient,
    new_ns: Callable[[], str],
) -> None:
    """``run`` with the API server down: poll and drift loops report, retry and recover."""
    if kube.external:
        pytest.skip("stops the API server; not possible with an external cluster")
    ns = new_ns()
    agent = k3s_agent(tmp_path / "a", fleet_repo, signing_key, kube, [ns], interval=1)
    fleet_repo.commit(manifests(namespace(ns), cm(ns, "app", mode="a")), sign=signing_key)
    assert (await sync(agent)).returncode == 0
    kube.stop()
    try:
        c2 = fleet_repo.commit(manifests(namespace(ns), cm(ns, "app", mode="b")), sign=signing_key)
        daemon = agent.popen("run")
        try:
            text = await asyncio.to_thread(
                read_until, daemon, "reconcile: error", "drift check failed"
            )
            assert "unreachable" in text and daemon.poll() is None
            kube.start()
            await asyncio.to_thread(read_until, daemon, f"reconcile: synced {c2[:12]} applied")
        finally:
            daemon.send_signal(signal.SIGTERM)
            rest, _ = await asyncio.to_thread(daemon.communicate, timeout=15)
        assert daemon.returncode == 0, rest
        assert "Traceback" not in text + rest
    finally:
        if "kube-apiserver" not in kube.procs:
            kube.start()
    live = await read_cm(kapi, ns, "app")
    assert live is not None and live.data == {"mode": "b"}
    assert status(agent)["applied"] == c2


LAZY_IMPORT = """
import sys
from pathlib import Path
from agent.config import load_config
from agent.service import build_targets

targets = build_targets(load_config(Path(sys.argv[1])))
print(",".join(t.name for t in targets), "kubernetes_asyncio" in sys.modules)
"""


def test_files_only_agent_never_imports_kubernetes_asyncio(
    tmp_path: Path, fleet_repo: FleetRepo
) -> None:
    files_only = write_agent_config(tmp_path / "files", fleet_repo.url)
    with_k3s = write_agent_config(
        tmp_path / "k3s",
        fleet_repo.url,
        extra=f'[targets.k3s]\nenabled = true\nkubeconfig = "{tmp_path / "kubeconfig"}"\n',
    )
    results = []
    for setup in (files_only, with_k3s):
        done = subprocess.run(
            [sys.executable, "-c", LAZY_IMPORT, str(setup.config)],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        results.append(done.stdout.split())
    assert results[0] == ["files", "False"]
    assert results[1] == ["files,k3s", "True"]  # the check itself can see the import


async def test_apiserver_down_during_health_wait_is_not_a_verdict(
    tmp_path: Path,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    kube: Kube,
    kapi: ApiClient,
    new_ns: Callable[[], str],
) -> None:
    """Health that cannot be checked is no reason to roll back or to mark the commit bad."""
    if kube.external:
        pytest.skip("stops the API server; not possible with an external cluster")
    ns = new_ns()
    agent = k3s_agent(tmp_path / "a", fleet_repo, signing_key, kube, [ns], health_timeout=6)
    c1 = fleet_repo.commit(manifests(namespace(ns), cm(ns, "base")), sign=signing_key)
    assert (await sync(agent)).returncode == 0
    # replicas 1 never becomes available here (no kubelet): health keeps waiting.
    c2 = fleet_repo.commit(
        manifests(namespace(ns), cm(ns, "base"), deploy(ns, "web", replicas=1)),
        sign=signing_key,
    )
    proc = agent.popen("sync", "--once")
    try:
        await asyncio.to_thread(wait_for_applying, agent, c2, proc)
        apps = AppsV1Api(kapi)
        async with asyncio.timeout(20):  # applied: the health wait has begun
            while True:
                with contextlib.suppress(ApiException):
                    await apps.read_namespaced_deployment("web", ns)
                    break
                await asyncio.sleep(0.05)
        kube.stop()
        output, _ = await asyncio.to_thread(proc.communicate, timeout=90)
    except BaseException:
        proc.kill()
        proc.communicate()
        kube.start()
        raise
    try:
        assert proc.returncode == 1, output
        assert "Traceback" not in output
        st = status(agent)
        assert st["bad_commits"] == [], output
        assert st["applied"] == c1 and st["interrupted_apply"] == c2
    finally:
        kube.start()
    # Back: the resumed apply gets a real verdict (never available) and rolls back.
    done = await sync(agent)
    assert done.returncode == 1, out(done)
    st = status(agent)
    assert st["bad_commits"] == [c2] and st["applied"] == c1
    assert st["interrupted_apply"] is None
