"""A real Kubernetes API server for the k3s target tests (session fixture ``kube``).

etcd (loopback, ``--unsafe-no-fsync``, data in /dev/shm), kube-apiserver v1.20.2 with
token auth and service-account keys, and kube-controller-manager running the
namespace, garbage-collector, deployment, replicaset and serviceaccount controllers.
There is no kubelet and no scheduler: pods never run, so a Deployment with replicas
>= 1 never becomes available (and one with replicas 0 does).

Binaries come from ``tests/kube/build-apiserver`` (cached outside the clone, default
/var/cache/edgefleet-kube/v1.20.2, override with EDGEFLEET_KUBE_CACHE); a cold build
takes minutes, so it runs once at collection time, before test timeouts apply.

With EDGEFLEET_K3S_KUBECONFIG=/path/to/k3s.yaml the tests use that real cluster
instead (nothing is started; ``stop``/``start`` are unavailable there).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.testbed.mosquitto import TlsFiles, free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "tests" / "kube" / "build-apiserver"
VERSION = "v1.20.2"
EXTERNAL_ENV = "EDGEFLEET_K3S_KUBECONFIG"
if TYPE_CHECKING:  # kubernetes_asyncio costs ~1 s to import: only for tests that use it
    from kubernetes_asyncio.client import ApiClient

CONTROLLERS = "namespace,garbagecollector,deployment,replicaset,serviceaccount,serviceaccount-token"


def bin_dir() -> Path:
    cache = Path(os.environ.get("EDGEFLEET_KUBE_CACHE", "/var/cache/edgefleet-kube"))
    return cache / VERSION


def ensure_binaries() -> Path:
    """Build (or reuse) the cached binaries; returns their directory."""
    directory = bin_dir()
    subprocess.run([str(BUILD_SCRIPT), str(directory.parent)], check=True)
    return directory


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries before any test runs, so a cold build is not cut by a timeout."""
    if os.environ.get(EXTERNAL_ENV) or session.config.option.collectonly:
        return
    if any("kube" in getattr(item, "fixturenames", ()) for item in session.items):
        ensure_binaries()


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Kube:
    """The API server the tests talk to; ``kubeconfig`` is what the agent gets."""

    kubeconfig: Path
    external: bool = False
    directory: Path | None = None
    port: int = 0
    token: str = ""
    ca: Path | None = None
    apiserver_args: list[str] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    etcd_data: Path | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _spawn(self, name: str, args: list[str]) -> None:
        assert self.directory is not None
        log = (self.directory / f"{name}.log").open("ab")
        with log:
            self.procs[name] = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def start(self) -> None:
        """(Re)start the API server on the same port and wait until it is ready."""
        if self.external:
            pytest.skip("cannot restart an external cluster's API server")
        self._spawn("kube-apiserver", self.apiserver_args)
        self.wait_ready()

    def stop(self) -> None:
        """Stop the API server (etcd and the controllers keep running)."""
        if self.external:
            pytest.skip("cannot stop an external cluster's API server")
        _stop(self.procs.pop("kube-apiserver", None))

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.ca is not None
        ctx = ssl.create_default_context(cafile=str(self.ca))
        req = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = self.procs.get("kube-apiserver")
            if proc is not None and proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as err:
                last = str(err)
            time.sleep(0.05)
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s ({last}); {self.logs()}")

    def logs(self) -> str:
        if self.directory is None:
            return ""
        tail = (self.directory / "kube-apiserver.log").read_text(errors="replace")[-2000:]
        return f"log tail:\n{tail}"

    def close(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            _stop(self.procs.pop(name, None))
        if self.etcd_data is not None:
            shutil.rmtree(self.etcd_data, ignore_errors=True)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _kubeconfig(path: Path, url: str, ca: Path, token: str) -> None:
    ca_data = base64.b64encode(ca.read_bytes()).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": url, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)


def start_kube(directory: Path) -> Kube:
    """etcd + kube-apiserver + kube-controller-manager on loopback, ready to use."""
    bins = ensure_binaries()
    directory.mkdir(parents=True, exist_ok=True)
    tls = TlsFiles.create(directory / "tls")
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    _openssl("genrsa", "-out", str(sa_key), "2048")
    _openssl("rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
    token = uuid.uuid4().hex
    tokens = directory / "tokens.csv"
    tokens.write_text(f'{token},admin,admin-uid,"system:masters"\n')
    kube = Kube(
        kubeconfig=directory / "kubeconfig.yaml",
        directory=directory,
        port=free_port(),
        token=token,
        ca=tls.ca,
    )
    _kubeconfig(kube.kubeconfig, kube.url, tls.ca, token)
    etcd_port, peer_port = free_port(), free_port()
    data = Path("/dev/shm") / f"edgefleet-etcd-{uuid.uuid4().hex[:12]}"
    kube.etcd_data = data
    try:
        kube._spawn(
            "etcd",
            [
                str(bins / "etcd"),
                "--name=test",
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=test=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        kube.apiserver_args = [
            str(bins / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={kube.port}",
            "--insecure-port=0",
            f"--cert-dir={directory / 'certs'}",
            f"--tls-cert-file={tls.cert}",
            f"--tls-private-key-file={tls.key}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=AlwaysAllow",
            f"--service-account-key-file={sa_pub}",
            f"--service-account-signing-key-file={sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.96.0.0/16",
            # The "kubernetes" Service cannot point at a loopback address.
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
        ]
        kube.start()
        kube._spawn(
            "kube-controller-manager",
            [
                str(bins / "kube-controller-manager"),
                f"--kubeconfig={kube.kubeconfig}",
                f"--authentication-kubeconfig={kube.kubeconfig}",
                f"--authorization-kubeconfig={kube.kubeconfig}",
                f"--controllers={CONTROLLERS}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={tls.ca}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--port=0",
                "--profiling=false",
            ],
        )
    except BaseException:
        kube.close()
        raise
    return kube


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    external = os.environ.get(EXTERNAL_ENV)
    if external:
        yield Kube(kubeconfig=Path(external), external=True)
        return
    k = start_kube(tmp_path_factory.mktemp("kube"))
    try:
        yield k
    finally:
        k.close()


@pytest.fixture
async def kapi(kube: Kube) -> AsyncIterator[ApiClient]:
    """A kubernetes_asyncio ApiClient for "by hand" changes, independent of the agent."""
    from kubernetes_asyncio.client import ApiClient, Configuration  # noqa: PLC0415
    from kubernetes_asyncio.config import load_kube_config  # noqa: PLC0415

    config = Configuration()
    await load_kube_config(config_file=str(kube.kubeconfig), client_configuration=config)
    async with ApiClient(configuration=config) as api:
        yield api


@pytest.fixture
async def kube_ns(kapi: ApiClient) -> AsyncIterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    from kubernetes_asyncio.client import CoreV1Api  # noqa: PLC0415

    name = f"t-{uuid.uuid4().hex[:10]}"
    core = CoreV1Api(kapi)
    await core.create_namespace({"metadata": {"name": name}})  # type: ignore[arg-type]
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            await core.delete_namespace(name)


# -- manifests for tests ------------------------------------------------------------


def cm(ns: str, name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": data,
    }


def deploy(ns: str, name: str, replicas: int = 0) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                # An image that cannot be pulled: never available on a real k3s either.
                "spec": {
                    "containers": [{"name": "app", "image": "registry.invalid/edgefleet/never:1"}]
                },
            },
        },
    }


def docs(*objs: Mapping[str, Any]) -> str:
    return yaml.safe_dump_all(list(objs))
