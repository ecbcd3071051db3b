"""A small async Kubernetes API client for the k3s target, on top of kubernetes_asyncio.

The only module that imports kubernetes_asyncio (~48 MB RSS): the agent imports the
k3s target, and with it this module, only when the target is enabled.

Every failure leaves as :class:`KubeRequestError` carrying the HTTP code (0 = the API
server could not be reached) and the API server's reason. kubernetes_asyncio 36.x's
DynamicClient does not raise for 404/409/422 when asked for the raw response: it hands
back a ``kind: Status`` body, so every answer is checked here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config
from kubernetes_asyncio.dynamic import DynamicClient
from kubernetes_asyncio.dynamic.exceptions import ResourceNotFoundError

from agent.errors import EdgefleetError

FIELD_MANAGER = "edgefleet"
REQUEST_TIMEOUT = 30.0
"""Seconds one API request may take before it counts as failed (transient)."""
IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"

log = logging.getLogger(__name__)
Obj = dict[str, Any]
T = TypeVar("T")
_UNAPPLIABLE = "failed to create typed patch object"
"""A 500 from server-side apply that the same input always gets (e.g. a Service port
without ``protocol`` on Kubernetes < 1.21): terminal, not a server hiccup."""


class KubeRequestError(EdgefleetError):
    """One API request failed; ``code`` 0 means the API server was not reachable."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any]) -> None:
        super().__init__(f"{reason}: {message}" if code else message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    @property
    def transient(self) -> bool:
        """Worth retrying later: unreachable, timeouts, throttling, server errors."""
        if self.code == 500 and _UNAPPLIABLE in self.message:
            return False
        return self.code in {0, 429} or self.code >= 500

    @property
    def unavailable(self) -> bool:
        """The API server cannot serve anyone right now (down, starting, throttling)."""
        return self.code in {0, 429, 503}


@dataclass(frozen=True)
class Kind:
    """Where objects of one kind live in the API."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str = "", name: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        return f"{base}/{self.plural}" + (f"/{name}" if name else "")


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def _is_file(path: Path) -> bool:
    return path.is_file()


def _unreachable(err: BaseException) -> KubeRequestError:
    # str() of aiohttp's errors names host and cause; timeouts have no text, only a type.
    why = str(err) or type(err).__name__
    return KubeRequestError(0, "Unreachable", f"API server unreachable: {why}", {})


class KubeClient:
    """Connection to one API server with its discovery cache; see :meth:`connect`."""

    def __init__(self, api: ApiClient, dynamic: DynamicClient) -> None:
        self._api = api
        self._dynamic = dynamic

    @classmethod
    async def connect(cls, kubeconfig: Path | None, state_dir: Path) -> KubeClient:
        """Load credentials (kubeconfig, else in-cluster) and run discovery.

        kubernetes_asyncio writes certificates from a kubeconfig to temp files: they go
        to ``state_dir/k8s-tmp`` (mode 0700), not to the world-readable /tmp.
        """
        tmp = _private_dir(state_dir / "k8s-tmp")
        config = Configuration()
        try:
            if kubeconfig is not None and _is_file(kubeconfig):
                await load_kube_config(
                    config_file=str(kubeconfig),
                    client_configuration=config,
                    persist_config=False,
                    temp_file_path=str(tmp),
                )
            elif os.environ.get(IN_CLUSTER_ENV):
                load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
            else:
                # k3s writes its kubeconfig when it starts: retry later.
                raise KubeRequestError(
                    0, "NoConfig", f"no kubeconfig at {kubeconfig} and not in a cluster", {}
                )
        except (ConfigException, OSError, ValueError, TypeError) as err:
            raise KubeRequestError(
                0, "BadConfig", f"cannot load kubeconfig {kubeconfig}: {err}", {}
            ) from err
        api = ApiClient(configuration=config)
        try:
            dynamic = await _guard(
                DynamicClient(api, cache_file=str(state_dir / "k8s-discovery.json"))
            )
        except BaseException:
            await api.close()
            raise
        return cls(api, dynamic)

    async def close(self) -> None:
        await self._api.close()

    async def kind(self, api_version: str, kind: str) -> Kind | None:
        """The served kind, or None when the server does not know it (e.g. missing CRD).

        A miss refreshes the discovery cache once, so a CRD created a moment ago is found.
        """
        try:
            res = await _guard(self._dynamic.resources.get(api_version=api_version, kind=kind))
        except ResourceNotFoundError:
            return None
        except KubeRequestError as err:
            if err.code == 404:  # the whole group/version is not served
                return None
            raise
        group, _, version = api_version.rpartition("/")
        return Kind(group, version, kind, str(res.name), bool(res.namespaced))

    async def get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        try:
            return await self._request("GET", kind.path(namespace, name))
        except KubeRequestError as err:
            if err.code == 404:
                return None
            raise

    async def apply(self, kind: Kind, body: Obj, *, dry_run: bool, force: bool) -> Obj:
        """Server-side apply of ``body`` as field manager ``edgefleet``."""
        meta = body["metadata"]
        return await self._request(
            "PATCH",
            kind.path(meta.get("namespace", ""), meta["name"]),
            body=body,
            content_type="application/apply-patch+yaml",
            field_manager=FIELD_MANAGER,
            force_conflicts="true" if force else "false",
            dry_run="All" if dry_run else None,
        )

    async def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """Delete in the background (dependents via the garbage collector); False if gone."""
        try:
            await self._request(
                "DELETE", kind.path(namespace, name), propagation_policy="Background"
            )
        except KubeRequestError as err:
            if err.code == 404:
                return False
            raise
        return True

    async def _request(self, method: str, path: str, **params: Any) -> Obj:
        params = {k: v for k, v in params.items() if v is not None}
        try:
            resp = await _guard(
                self._dynamic.request(
                    method, path, serialize=False, _request_timeout=REQUEST_TIMEOUT, **params
                )
            )
            async with resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise _unreachable(err) from err
        return _decode(status, text, method, path)


def _decode(status: int, text: str, method: str, path: str) -> Obj:
    """The JSON object of a response; failures (HTTP or ``kind: Status``) raise."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = None
    if not isinstance(data, dict):
        if 200 <= status < 300:
            raise KubeRequestError(502, "BadResponse", f"{method} {path}: not a JSON object", {})
        data = {}
    failed = data.get("kind") == "Status" and data.get("status") == "Failure"
    if 200 <= status < 300 and not failed:
        return data
    raise _status_error(int(data.get("code") or status), data, text or f"HTTP {status}")


def _status_error(code: int, status: Obj, fallback: str) -> KubeRequestError:
    reason = str(status.get("reason") or "Error")
    message = str(status.get("message") or fallback.strip())
    details = status.get("details")
    return KubeRequestError(code, reason, message, details if isinstance(details, dict) else {})


async def _guard(awaitable: Awaitable[T]) -> T:
    """Await a kubernetes_asyncio call, mapping its exceptions to KubeRequestError."""
    try:
        return await asyncio.wait_for(awaitable, REQUEST_TIMEOUT)
    except ApiException as err:  # DynamicApiError included
        body = err.body.decode(errors="replace") if isinstance(err.body, bytes) else err.body
        try:
            status = json.loads(body or "{}")
        except ValueError:
            status = {}
        status = status if isinstance(status, dict) else {}
        raise _status_error(int(err.status or 0), status, str(body or err.reason)) from err
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        raise _unreachable(err) from err
