"""A private test network between the host and containers (TESTBED.md: network namespaces).

``EdgeNet`` is a host bridge with the first address of a random 10.231.x.0/24;
``attach(container)`` moves one end of a new veth pair into the container's own network
namespace and gives it the next free address; ``netns(net)`` does the same for a new
named namespace (a host process runs in it with ``ip netns exec``). Traffic stays between
the host and the namespaces a test created. Teardown deletes the bridge (and with it
every host-side veth).
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.testbed.mosquitto import Mosquitto, free_port
from tests.testbed.nspawn import NspawnContainer

Netns = int | str
"""A network namespace: a process's (its pid) or a named one (``ip netns add``)."""


def inside(netns: Netns) -> list[str]:
    """The command prefix that runs a program in ``netns``."""
    if isinstance(netns, int):
        return ["nsenter", "-t", str(netns), "-n"]
    return ["ip", "netns", "exec", netns]


def run(*command: str, netns: Netns | None = None) -> None:
    prefix = inside(netns) if netns is not None else []
    done = subprocess.run([*prefix, *command], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


def ip(*args: str, netns: Netns | None = None) -> None:
    run("ip", *args, netns=netns)


def _free_subnet() -> ipaddress.IPv4Network:
    used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    for _ in range(50):
        net = ipaddress.IPv4Network(f"10.231.{secrets.randbelow(254) + 1}.0/24")
        if str(net) not in used:
            return net
    raise RuntimeError("no free 10.231.x.0/24 test subnet")


@dataclass
class EdgeNet:
    bridge: str = field(default_factory=lambda: f"efb{secrets.token_hex(3)}")
    subnet: ipaddress.IPv4Network = field(default_factory=_free_subnet)
    _next: int = 2

    @property
    def host_ip(self) -> str:
        """The host's address on the bridge: services for the edges bind here."""
        return str(self.subnet.network_address + 1)

    def up(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.host_ip}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def attach(self, target: NspawnContainer | str) -> str:
        """Wire a container's network namespace, or a named one, to the bridge; returns
        its address."""
        netns: Netns = target if isinstance(target, str) else target.leader
        addr = str(self.subnet.network_address + self._next)
        self._next += 1
        host_end, inner = f"{self.bridge}h{self._next}", f"{self.bridge}c{self._next}"
        ip("link", "add", host_end, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", str(netns))
        ip("link", "set", host_end, "master", self.bridge)
        ip("link", "set", host_end, "up")
        ip("addr", "add", f"{addr}/{self.subnet.prefixlen}", "dev", inner, netns=netns)
        ip("link", "set", inner, "up", netns=netns)
        ip("link", "set", "lo", "up", netns=netns)
        return addr

    def down(self) -> None:
        with contextlib.suppress(RuntimeError):
            ip("link", "del", self.bridge)


@contextlib.contextmanager
def bridge_broker(directory: Path, net: EdgeNet) -> Iterator[tuple[Mosquitto, str]]:
    """mosquitto on loopback (for the test) and on the bridge; yields it and the URL the
    containers use."""
    port = free_port()
    broker = Mosquitto(directory, extra=f"listener {port} {net.host_ip}\nallow_anonymous true\n")
    broker.start()
    try:
        yield broker, f"mqtt://{net.host_ip}:{port}"
    finally:
        broker.stop()


@contextlib.contextmanager
def netns(net: EdgeNet) -> Iterator[tuple[str, str]]:
    """A new named network namespace wired to ``net``: yields its name and address.
    Deleting it at the end also deletes its veth pair and any nft tables made in it."""
    name = f"efn{secrets.token_hex(4)}"
    ip("netns", "add", name)
    try:
        yield name, net.attach(name)
    finally:
        with contextlib.suppress(RuntimeError):
            ip("netns", "del", name)


@contextlib.contextmanager
def edge_net() -> Iterator[EdgeNet]:
    net = EdgeNet()
    net.up()
    try:
        yield net
    finally:
        net.down()


@pytest.fixture(scope="module")
def edgenet() -> Iterator[EdgeNet]:
    with edge_net() as net:
        yield net
