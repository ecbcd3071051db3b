"""The k3s target against a real Kubernetes API server.

By default the session fixture ``kube`` (tests/testbed/kube.py) runs etcd,
kube-apiserver and kube-controller-manager v1.20.2 built from Debian's source package
by tests/kube/build-apiserver (cached in /var/cache/edgefleet-kube). There is no
kubelet: pods never run, so a Deployment with replicas 0 is available and one with
replicas >= 1 never is.

The same tests run against a real k3s when a kubeconfig is given::

    EDGEFLEET_K3S_KUBECONFIG=/etc/rancher/k3s/k3s.yaml .venv/bin/pytest tests/test_k3s_target.py

(there the outage test is skipped: it must stop and restart the API server, and the
"never available" Deployment uses an image that cannot be pulled so it stays
unavailable on a real node too). Each test works in its own namespace.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, AppsV1Api, CoreV1Api, CustomObjectsApi

from agent.changeset import Action, ChangeSet
from agent.config import K3sConfig
from agent.desired import DesiredFile, DesiredState
from agent.errors import ApplyError, PlanError, TransientError
from agent.k8s import health, manifests
from agent.state import Owned
from agent.targets.base import ApplyContext
from agent.targets.k3s import K3sTarget
from tests.testbed.kube import Kube, cm, deploy, docs
from tests.testbed.wait import until

LABEL = "app.kubernetes.io/managed-by"


class Harness:
    """Drives one K3sTarget the way the reconcile pipeline does, with an in-memory inventory."""

    def __init__(self, target: K3sTarget) -> None:
        self.target = target
        self.inventory: dict[str, Owned] = {}
        self.commits = 0
        self.on_record: Callable[[str], None] | None = None

    def record(self, target: str, subject: str, owned: Owned | None) -> None:
        assert target == "k3s"
        if owned is None:
            self.inventory.pop(subject, None)
        else:
            self.inventory[subject] = owned
        if self.on_record is not None:
            self.on_record(subject)

    def desired(self, files: Mapping[str, str]) -> DesiredState:
        self.commits += 1
        commit = f"{self.commits:040x}"
        return DesiredState(
            commit=commit,
            paths=("common",),
            files={
                f"manifests/{name}": DesiredFile(
                    path=f"manifests/{name}", data=data.encode(), git_mode=0o100644, origin="common"
                )
                for name, data in files.items()
            },
        )

    def ctx(self, desired: DesiredState) -> ApplyContext:
        return ApplyContext(commit=desired.commit, record=self.record)

    async def plan(self, desired: DesiredState) -> ChangeSet:
        return await self.target.plan(desired, dict(self.inventory))

    async def sync(self, files: Mapping[str, str]) -> ChangeSet:
        desired = self.desired(files)
        plan = await self.plan(desired)
        await self.target.apply(plan, desired, self.ctx(desired))
        await self.target.prune(plan, self.ctx(desired))
        return plan


@pytest.fixture
async def harness(kube: Kube, tmp_path: Path) -> AsyncIterator[Callable[..., Harness]]:
    made: list[K3sTarget] = []

    def make(
        namespaces: tuple[str, ...] = (), allow_cluster_scoped: bool = False, node: str = "edge-1"
    ) -> Harness:
        cfg = K3sConfig(
            enabled=True,
            kubeconfig=kube.kubeconfig,
            namespaces=namespaces,
            allow_cluster_scoped=allow_cluster_scoped,
        )
        target = K3sTarget(cfg, tmp_path / f"state-{len(made)}", node=node)
        made.append(target)
        return Harness(target)

    yield make
    for target in made:
        await target.close()


def actions(plan: ChangeSet) -> dict[str, str]:
    return {c.subject: c.action.value for c in plan.changes}


async def test_create_update_prune(
    harness: Callable[..., Harness], kube_ns: str, kapi: ApiClient
) -> None:
    h = harness(namespaces=(kube_ns,))
    core, apps = CoreV1Api(kapi), AppsV1Api(kapi)
    app_cm, web = f"core/ConfigMap/{kube_ns}/app", f"apps/Deployment/{kube_ns}/web"

    plan = await h.sync({"app.yaml": docs(cm(kube_ns, "app", mode="a"), deploy(kube_ns, "web"))})
    assert actions(plan) == {app_cm: "created", web: "created"}
    live = await core.read_namespaced_config_map("app", kube_ns)
    assert live.data == {"mode": "a"}
    assert live.metadata.labels[LABEL] == "edgefleet"
    assert live.metadata.annotations["edgefleet.io/source"] == f"edge-1@{1:040x}"
    assert set(h.inventory) == {app_cm, web}
    assert h.inventory[web].meta["plural"] == "deployments"

    # Nothing changed: everything unchanged, no write.
    desired = h.desired({"app.yaml": docs(cm(kube_ns, "app", mode="a"), deploy(kube_ns, "web"))})
    plan = await h.plan(desired)
    assert plan.empty, plan.lines()
    assert plan.counts()["unchanged"] == 2

    # One changed object; the other keeps its old source annotation.
    plan = await h.sync({"app.yaml": docs(cm(kube_ns, "app", mode="b"), deploy(kube_ns, "web"))})
    assert actions(plan) == {app_cm: "configured", web: "unchanged"}
    assert ".data.mode" in plan.changes[0].detail
    assert (await core.read_namespaced_config_map("app", kube_ns)).data == {"mode": "b"}
    dep = await apps.read_namespaced_deployment("web", kube_ns)
    assert dep.metadata.annotations["edgefleet.io/source"] == f"edge-1@{1:040x}"

    # Deployment with replicas 0 is available: healthy once the controller caught up.
    desired = h.desired({"app.yaml": docs(cm(kube_ns, "app", mode="b"), deploy(kube_ns, "web"))})
    problems = await until(lambda: _healthy(h, desired), 30, "web healthy")
    assert problems == "healthy"

    # Removed from Git -> deleted from the cluster and the inventory.
    plan = await h.sync({"app.yaml": docs(cm(kube_ns, "app", mode="b"))})
    assert actions(plan) == {app_cm: "unchanged", web: "deleted"}
    assert set(h.inventory) == {app_cm}
    gone = await until(lambda: _absent(apps.list_namespaced_deployment(kube_ns)), 30, "web deleted")
    assert gone


def test_kubeconfig_certificates_stay_under_state_dir(kube: Kube, tmp_path: Path) -> None:
    """kubernetes_asyncio writes *-data certificates to files; they must not go to /tmp.

    Its temp-file cache is process-global, so this runs in a fresh interpreter.
    """
    script = f"""
import asyncio, pathlib
from agent.config import K3sConfig
from agent.desired import DesiredState
from agent.targets.k3s import K3sTarget

async def main():
    cfg = K3sConfig(enabled=True, kubeconfig=pathlib.Path({str(kube.kubeconfig)!r}))
    target = K3sTarget(cfg, pathlib.Path({str(tmp_path)!r}))
    plan = await target.plan(DesiredState("0" * 40, (), {{}}), {{}})
    assert plan.empty
    private = pathlib.Path({str(tmp_path)!r}) / "k8s-tmp"
    files = list(private.iterdir())
    modes = [oct(f.stat().st_mode & 0o777) for f in files]
    print(oct(private.stat().st_mode & 0o777), len(files), modes)
    await target.close()

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    mode, count, file_modes = done.stdout.split(" ", 2)
    assert mode == "0o700"
    assert int(count) >= 1
    assert "0o644" not in file_modes
    assert (tmp_path / "k8s-discovery.json").is_file()


async def _healthy(h: Harness, desired: DesiredState) -> str | None:
    problems = await h.target.health(desired, h.ctx(desired))
    return "healthy" if not problems else None


async def _absent(listing: Any) -> bool:
    return not (await listing).items


async def test_crd_and_custom_resource_in_one_commit(
    harness: Callable[..., Harness], kube_ns: str, kapi: ApiClient
) -> None:
    h = harness(namespaces=(kube_ns,), allow_cluster_scoped=True)
    group = f"{kube_ns}.example.org"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer"}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    widget = {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": kube_ns},
        "spec": {"size": 3},
    }
    crd_key = f"apiextensions.k8s.io/CustomResourceDefinition//widgets.{group}"
    cr_key = f"{group}/Widget/{kube_ns}/w1"
    # The custom resource comes first in the file: ordering is the target's job.
    plan = await h.sync({"a.yaml": docs(widget), "b.yaml": docs(crd)})
    assert [c.subject for c in plan.changes] == [crd_key, cr_key]
    assert {c.action for c in plan.changes} == {Action.CREATED}
    got = await CustomObjectsApi(kapi).get_namespaced_custom_object(
        group, "v1", kube_ns, "widgets", "w1"
    )
    assert got["spec"] == {"size": 3}
    assert got["metadata"]["labels"][LABEL] == "edgefleet"

    # Same commit again: no writes; the CR's dry-run works now that the kind is served.
    plan = await h.plan(h.desired({"a.yaml": docs(widget), "b.yaml": docs(crd)}))
    assert plan.empty, plan.lines()

    # Both removed: the CR is deleted before its CRD.
    plan = await h.sync({})
    assert [c.subject for c in plan.changes] == [crd_key, cr_key]
    assert h.inventory == {}


async def test_dry_run_rejection_applies_nothing(
    harness: Callable[..., Harness], kube_ns: str, kapi: ApiClient
) -> None:
    h = harness(namespaces=(kube_ns,))
    bad_deploy = deploy(kube_ns, "broken")
    del bad_deploy["spec"]["selector"]
    bad_svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "svc", "namespace": kube_ns},
        "spec": {"ports": [{"port": 99999, "protocol": "TCP"}]},
    }
    files = {"all.yaml": docs(cm(kube_ns, "fine", a="1"), bad_deploy, bad_svc)}
    with pytest.raises(PlanError) as err:
        await h.sync(files)
    text = str(err.value)
    assert "nothing applied" in text
    assert f"apps/Deployment/{kube_ns}/broken (manifests/all.yaml#1)" in text
    assert "selector" in text
    assert f"core/Service/{kube_ns}/svc (manifests/all.yaml#2)" in text
    assert "99999" in text
    assert "fine" not in text
    names = [
        c.metadata.name for c in (await CoreV1Api(kapi).list_namespaced_config_map(kube_ns)).items
    ]
    assert "fine" not in names
    assert h.inventory == {}


async def test_malformed_input_is_refused(harness: Callable[..., Harness], kube_ns: str) -> None:
    h = harness(namespaces=(kube_ns,))
    ok = docs(cm(kube_ns, "a", x="1"))
    cases = {
        "manifests/bad.yaml: document 1: invalid YAML": {"bad.yaml": ok + "---\nkey: [unclosed\n"},
        "only *.yaml and *.yml": {"notes.txt": "hello"},
        "already defined in manifests/a.yaml#0": {"a.yaml": ok, "b.yml": ok},
        "unknown kind Gizmo": {"a.yaml": docs({**cm(kube_ns, "g"), "kind": "Gizmo"})},
        "metadata.name is required": {"a.yaml": docs({"apiVersion": "v1", "kind": "ConfigMap"})},
        "must be a mapping": {"a.yaml": "- just\n- a list\n"},
    }
    for expected, files in cases.items():
        with pytest.raises(PlanError, match=re.escape(expected)):
            await h.plan(h.desired(files))


async def test_conflict_with_other_field_manager_force_wins(
    harness: Callable[..., Harness], kube_ns: str, kapi: ApiClient
) -> None:
    h = harness(namespaces=(kube_ns,))
    apps = AppsV1Api(kapi)
    files = {"web.yaml": docs(deploy(kube_ns, "web", replicas=0))}
    await h.sync(files)
    # Someone scales by hand: "hand-edit" now owns .spec.replicas.
    await apps.patch_namespaced_deployment(
        "web", kube_ns, {"spec": {"replicas": 2}}, field_manager="hand-edit"
    )
    plan = await h.sync(files)
    (change,) = plan.changes
    assert change.action is Action.CONFIGURED
    assert "forced over another field manager" in change.detail
    assert "hand-edit" in change.detail
    assert ".spec.replicas" in change.detail
    live = await apps.read_namespaced_deployment("web", kube_ns)
    assert live.spec.replicas == 0
    owners = {
        m.manager
        for m in live.metadata.managed_fields
        if "f:replicas" in (m.fields_v1 or {}).get("f:spec", {})
    }
    assert owners == {"edgefleet"}


async def test_object_not_owned_is_refused(
    harness: Callable[..., Harness], kube_ns: str, kapi: ApiClient
) -> None:
    h = harness(namespaces=(kube_ns,))
    core = CoreV1Api(kapi)
    await core.create_namespaced_config_map(kube_ns, cm(kube_ns, "theirs", who="ops"))
    helm = cm(kube_ns, "helms", who="helm")
    helm["metadata"]["labels"] = {LABEL: "Helm"}
    await core.create_namespaced_config_map(kube_ns, helm)
    files = {
        "x.yaml": docs(
            cm(kube_ns, "theirs", who="edgefleet"),
            cm(kube_ns, "helms", who="edgefleet"),
            cm(kube_ns, "mine", who="edgefleet"),
        )
    }
    with pytest.raises(PlanError) as err:
        await h.sync(files)
    assert f"core/ConfigMap/{kube_ns}/theirs: exists and was not created by edgefleet" in str(
        err.value
    )
    assert f"core/ConfigMap/{kube_ns}/helms: exists, managed by 'Helm'" in str(err.value)
    assert (await core.read_namespaced_config_map("theirs", kube_ns)).data == {"who": "ops"}
    assert (await core.read_namespaced_config_map("helms", kube_ns)).data == {"who": "helm"}
    names = {c.metadata.name for c in (await core.list_namespaced_config_map(kube_ns)).items}
    assert "mine" not in names

    # Labelled by edgefleet on another node: refused too.
    other = harness(namespaces=(kube_ns,), node="edge-2")
    await other.sync({"y.yaml": docs(cm(kube_ns, "shared", a="1"))})
    with pytest.raises(PlanError, match="managed by edgefleet on node 'edge-2'"):
        await h.sync({"y.yaml": docs(cm(kube_ns, "shared", a="1"))})


async def test_drift_detected_reported_and_corrected(
    harness: Callable[..., Harness], kube_ns: str, kapi: ApiClient
) -> None:
    h = harness(namespaces=(kube_ns,))
    core, apps = CoreV1Api(kapi), AppsV1Api(kapi)
    files = {
        "all.yaml": docs(
            cm(kube_ns, "edited", k="v"),
            cm(kube_ns, "unlabelled", k="v"),
            cm(kube_ns, "deleted", k="v"),
            cm(kube_ns, "untouched", k="v"),
            deploy(kube_ns, "web", replicas=0),
        )
    }
    await h.sync(files)
    desired = h.desired(files)
    assert await h.target.drift(desired, h.inventory) == []

    await core.patch_namespaced_config_map("edited", kube_ns, {"data": {"k": "by hand"}})
    await core.patch_namespaced_config_map(
        "unlabelled", kube_ns, {"metadata": {"labels": {LABEL: None}}}
    )
    await core.delete_namespaced_config_map("deleted", kube_ns)
    await apps.patch_namespaced_deployment_scale("web", kube_ns, {"spec": {"replicas": 3}})

    drift = await h.target.drift(desired, h.inventory)
    by_subject = {d["subject"]: d for d in drift}
    assert set(by_subject) == {
        f"core/ConfigMap/{kube_ns}/edited",
        f"core/ConfigMap/{kube_ns}/unlabelled",
        f"core/ConfigMap/{kube_ns}/deleted",
        f"apps/Deployment/{kube_ns}/web",
    }
    assert all(d["target"] == "k3s" for d in drift)
    assert by_subject[f"core/ConfigMap/{kube_ns}/deleted"]["kind"] == "missing"
    assert by_subject[f"core/ConfigMap/{kube_ns}/edited"]["kind"] == "modified"
    assert ".data.k" in by_subject[f"core/ConfigMap/{kube_ns}/edited"]["detail"]
    assert LABEL in by_subject[f"core/ConfigMap/{kube_ns}/unlabelled"]["detail"]
    assert ".spec.replicas" in by_subject[f"apps/Deployment/{kube_ns}/web"]["detail"]

    # Report-only: drift() changed nothing.
    assert (await core.read_namespaced_config_map("edited", kube_ns)).data == {"k": "by hand"}
    assert (await apps.read_namespaced_deployment("web", kube_ns)).spec.replicas == 3
    # A removed label is drift on our object, not a reason to refuse it.
    plan = await h.plan(desired)
    assert actions(plan)[f"core/ConfigMap/{kube_ns}/unlabelled"] == "configured"
    assert actions(plan)[f"core/ConfigMap/{kube_ns}/deleted"] == "created"

    await h.target.correct(drift, desired, h.ctx(desired))
    assert await h.target.drift(desired, h.inventory) == []
    assert (await core.read_namespaced_config_map("edited", kube_ns)).data == {"k": "v"}
    restored = await core.read_namespaced_config_map("unlabelled", kube_ns)
    assert restored.metadata.labels[LABEL] == "edgefleet"
    assert (await core.read_namespaced_config_map("deleted", kube_ns)).data == {"k": "v"}
    assert (await apps.read_namespaced_deployment("web", kube_ns)).spec.replicas == 0


async def test_deployment_never_available_is_a_health_problem(
    harness: Callable[..., Harness], kube_ns: str
) -> None:
    h = harness(namespaces=(kube_ns,))
    files = {"w.yaml": docs(deploy(kube_ns, "stuck", replicas=1), deploy(kube_ns, "idle"))}
    await h.sync(files)
    desired = h.desired(files)

    async def observed() -> list[Any] | None:
        problems = await h.target.health(desired, h.ctx(desired))
        # Wait until the controller has seen both generations and judged "idle" healthy.
        if len(problems) == 1 and "generation" not in problems[0].reason:
            return problems
        return None

    problems = await until(observed, 30, "the controller's verdict")
    assert problems, "deployment controller never reported"
    (problem,) = problems
    assert problem.subject == f"apps/Deployment/{kube_ns}/stuck"
    assert "of 1 replicas" in problem.reason


async def test_apiserver_outage_mid_apply_then_recovery(
    harness: Callable[..., Harness], kube: Kube, kube_ns: str, kapi: ApiClient
) -> None:
    if kube.external:
        pytest.skip("needs to stop the API server; not possible with an external cluster")
    h = harness(namespaces=(kube_ns,))
    old = [cm(kube_ns, f"old-{i}", i=str(i)) for i in range(3)]
    await h.sync({"a.yaml": docs(*old)})
    new = [cm(kube_ns, f"new-{i}", i=str(i)) for i in range(12)]
    files = {"a.yaml": docs(old[0], *new)}
    desired = h.desired(files)
    plan = await h.plan(desired)
    assert plan.counts() == {"created": 12, "configured": 0, "unchanged": 1, "deleted": 2}

    def stop_after_first(subject: str) -> None:
        h.on_record = None
        kube.stop()

    h.on_record = stop_after_first
    try:
        with pytest.raises(ApplyError) as err:
            await h.target.apply(plan, desired, h.ctx(desired))
        assert isinstance(err.value, TransientError)
        assert "unreachable" in str(err.value)
        applied = {s for s in h.inventory if "/new-" in s}
        assert 1 <= len(applied) < 12
        with pytest.raises(ApplyError, match="kept in the inventory"):
            await h.target.prune(plan, h.ctx(desired))
        assert sum("/old-" in s for s in h.inventory) == 3
        with pytest.raises(TransientError):
            await h.target.plan(desired, h.inventory)
    finally:
        kube.start()

    plan = await h.sync(files)
    assert plan.counts()["created"] == 12 - len(applied)
    assert plan.counts()["deleted"] == 2
    names = {
        c.metadata.name for c in (await CoreV1Api(kapi).list_namespaced_config_map(kube_ns)).items
    }
    assert {f"new-{i}" for i in range(12)} | {"old-0"} <= names
    assert not {"old-1", "old-2"} & names
    assert sum("/old-" in s for s in h.inventory) == 1


async def test_namespace_allowlist_and_cluster_scoped_refusal(
    harness: Callable[..., Harness], kube_ns: str
) -> None:
    h = harness(namespaces=(kube_ns,))
    other = f"other-{uuid.uuid4().hex[:6]}"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": f"edgefleet-{kube_ns}"},
        "rules": [],
    }
    ns_obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}}
    with pytest.raises(PlanError) as err:
        await h.plan(h.desired({"x.yaml": docs(cm(other, "a"), role, ns_obj, cm(kube_ns, "ok"))}))
    text = str(err.value)
    assert (
        f"core/ConfigMap/{other}/a: namespace '{other}' is not in [targets.k3s] namespaces" in text
    )
    assert f"ClusterRole//edgefleet-{kube_ns}: cluster-scoped objects need" in text
    assert f"core/Namespace//{other}: cluster-scoped" in text
    assert f"/{kube_ns}/ok" not in text
    # No namespace in the manifest means "default", which is not allowed here either.
    no_ns = cm(kube_ns, "b")
    del no_ns["metadata"]["namespace"]
    with pytest.raises(PlanError, match="namespace 'default' is not in"):
        await h.plan(h.desired({"x.yaml": docs(no_ns)}))


# -- pure logic ------------------------------------------------------------------------


def test_health_rules() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "status": {}}
    assert health.problem(job) == "job not complete yet"
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "message": "backoff"}]}
    assert health.problem(job) == "job failed: backoff"
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert health.problem(job) is None
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"generation": 2},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 2, "readyReplicas": 1},
    }
    assert health.problem(sts) == "1 of 2 replicas ready"
    ds = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "desiredNumberScheduled": 3,
            "updatedNumberScheduled": 3,
            "numberAvailable": 2,
        },
    }
    assert health.problem(ds) == "2 of 3 pods available"
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"generation": 3},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 2},
    }
    assert "not observed" in (health.problem(dep) or "")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Pending"}]},
    }
    assert health.problem(pod) == "not Ready: Pending"
    assert health.problem({"apiVersion": "v1", "kind": "ConfigMap"}) is None


def test_normalize_ignores_server_fields_and_source() -> None:
    live = {
        "metadata": {
            "name": "a",
            "resourceVersion": "5",
            "managedFields": [{}],
            "annotations": {manifests.SOURCE_ANNOTATION: "n@1"},
        },
        "data": {"k": "v"},
        "status": {"x": 1},
    }
    want = {
        "metadata": {"name": "a", "annotations": {manifests.SOURCE_ANNOTATION: "n@2"}},
        "data": {"k": "v"},
    }
    assert manifests.normalize(live) == manifests.normalize(want)
    want["data"] = {"k": "w", "extra": "1"}
    assert manifests.diff(manifests.normalize(want), manifests.normalize(live)) == [
        ".data.extra",
        ".data.k",
    ]
    assert manifests.split_subject("core/Namespace//ns") == ("", "Namespace", "", "ns")
