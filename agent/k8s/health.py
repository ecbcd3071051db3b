"""Readiness of one live Kubernetes object, judged from its status (pure logic).

:func:`problem` returns None when the object is healthy and a short reason otherwise.
Kinds without a known rollout model are healthy once they exist, unless they carry
a ``Ready`` condition, which is then honoured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]


def problem(obj: Obj) -> str | None:
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    check = _CHECKS.get((group, str(obj.get("kind", ""))))
    if check is not None:
        return check(obj)
    ready = _condition(obj, "Ready")
    if ready is not None and ready.get("status") != "True":
        return f"not Ready: {_why(ready)}"
    return None


def _status(obj: Obj) -> Obj:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def _condition(obj: Obj, kind: str) -> Obj | None:
    for cond in _status(obj).get("conditions") or ():
        if isinstance(cond, dict) and cond.get("type") == kind:
            return cond
    return None


def _why(cond: Obj) -> str:
    return str(cond.get("message") or cond.get("reason") or cond.get("status"))


def _stale(obj: Obj) -> str | None:
    generation = int(obj.get("metadata", {}).get("generation") or 0)
    observed = int(_status(obj).get("observedGeneration") or 0)
    if observed < generation:
        return f"generation {generation} not observed yet (controller at {observed})"
    return None


def _deployment(obj: Obj) -> str | None:
    if stale := _stale(obj):
        return stale
    progressing = _condition(obj, "Progressing")
    if progressing is not None and progressing.get("reason") == "ProgressDeadlineExceeded":
        return f"rollout stuck: {_why(progressing)}"
    status = _status(obj)
    want = int(obj.get("spec", {}).get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    total = int(status.get("replicas") or 0)
    if updated < want:
        return f"{updated} of {want} replicas updated"
    if available < want:
        return f"{available} of {want} replicas available"
    if total > updated:
        return f"{total - updated} old replicas still running"
    return None


def _statefulset(obj: Obj) -> str | None:
    if stale := _stale(obj):
        return stale
    status = _status(obj)
    want = int(obj.get("spec", {}).get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    if ready < want:
        return f"{ready} of {want} replicas ready"
    if status.get("updateRevision") and status.get("currentRevision") != status.get(
        "updateRevision"
    ):
        return f"{updated} of {want} replicas updated"
    return None


def _daemonset(obj: Obj) -> str | None:
    if stale := _stale(obj):
        return stale
    status = _status(obj)
    want = int(status.get("desiredNumberScheduled") or 0)
    updated = int(status.get("updatedNumberScheduled") or 0)
    available = int(status.get("numberAvailable") or 0)
    if updated < want:
        return f"{updated} of {want} pods updated"
    if available < want:
        return f"{available} of {want} pods available"
    return None


def _job(obj: Obj) -> str | None:
    failed = _condition(obj, "Failed")
    if failed is not None and failed.get("status") == "True":
        return f"job failed: {_why(failed)}"
    complete = _condition(obj, "Complete")
    if complete is None or complete.get("status") != "True":
        return "job not complete yet"
    return None


def _crd(obj: Obj) -> str | None:
    established = _condition(obj, "Established")
    if established is None or established.get("status") != "True":
        return "CRD not established yet"
    return None


_CHECKS: dict[tuple[str, str], Callable[[Obj], str | None]] = {
    ("apps", "Deployment"): _deployment,
    ("apps", "StatefulSet"): _statefulset,
    ("apps", "DaemonSet"): _daemonset,
    ("batch", "Job"): _job,
    ("apiextensions.k8s.io", "CustomResourceDefinition"): _crd,
}
