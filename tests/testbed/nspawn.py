"""A real systemd, booted as PID 1 of its own container (systemd-nspawn), per TESTBED.md.

The container's root is an overlay of the host's / with a tmpfs upper layer, so nothing
it (or a test) writes reaches the host. ``NspawnContainer.root`` is the merged directory
(the host path of the container's /); ``systemctl_prefix`` drives its systemd from the
host through nsenter. Teardown powers the container off and asserts that no mount,
cgroup or process is left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
CGROUP_PARENT = "edgefleet-test"
BOOT_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

# Host units that must not start inside the test container (they are enabled on the host
# and would bind its ports or do maintenance work); a minimal default target keeps most
# of them away, masks catch what basic.target and sysinit.target still pull in.
MASKED = (
    "ssh.service",
    "ssh.socket",
    "sshd.service",
    "mosquitto.service",
    "postgresql.service",
    "cron.service",
    "getty@tty1.service",
    "console-getty.service",
    "container-getty@.service",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    "e2scrub_reap.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "man-db.timer",
    "systemd-tmpfiles-clean.timer",
    "systemd-networkd.service",
    "systemd-resolved.service",
)

DEFAULT_TARGET = """\
[Unit]
Description=edgefleet test container
Requires=basic.target
Wants=dbus.socket
After=basic.target
AllowIsolate=yes
"""

JOURNALD_CONF = """\
[Journal]
Storage=volatile
RuntimeMaxUse=8M
"""


@dataclass
class NspawnContainer:
    name: str
    base: Path
    """tmpfs holding the overlay's upper, work and merged directories."""
    leader: int
    """Host PID of the container's PID 1 (systemd)."""
    proc: subprocess.Popen[bytes]
    log: Path
    netns: str | None = None
    binds_ro: tuple[Path, ...] = ()

    @property
    def root(self) -> Path:
        """Host path of the container's / (the overlay's merged directory)."""
        return self.base / "merged"

    @property
    def unit_dir(self) -> Path:
        return self.root / "etc/systemd/system"

    @property
    def nsenter(self) -> list[str]:
        return ["nsenter", "-t", str(self.leader), "-a"]

    @property
    def systemctl_prefix(self) -> list[str]:
        return [*self.nsenter, "systemctl"]

    def run(self, *cmd: str, check: bool = True, timeout: float = 30.0) -> str:
        """Run a command inside the container's namespaces; returns stdout."""
        done = subprocess.run(
            [*self.nsenter, *cmd], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} in {self.name} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done.stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", "-p", ",".join(props), "--", unit)
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _prepare_root(root: Path) -> None:
    machine_id = subprocess.run(
        ["systemd-id128", "new"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (root / "etc/machine-id").write_text(machine_id + "\n")
    units = root / "etc/systemd/system"
    (units / "edgefleet-test.target").write_text(DEFAULT_TARGET)
    default = units / "default.target"
    default.unlink(missing_ok=True)
    default.symlink_to("edgefleet-test.target")
    for unit in MASKED:
        link = units / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    journald = root / "etc/systemd/journald.conf.d"
    journald.mkdir(parents=True, exist_ok=True)
    (journald / "edgefleet-test.conf").write_text(JOURNALD_CONF)


def _cgroup_dirs(name: str) -> list[Path]:
    return [r / CGROUP_PARENT / name for r in CGROUP_ROOTS]


def _remove_cgroup(path: Path) -> None:
    """rmdir a cgroup tree bottom-up (cgroupfs only lets empty leaves go)."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir():
            _remove_cgroup(child)
    path.rmdir()


def _cgroup_pids(path: Path) -> list[int]:
    pids: list[int] = []
    if not path.is_dir():
        return pids
    for procs in path.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.extend(int(p) for p in procs.read_text().split())
    return pids


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path)
    with open("/proc/self/mountinfo") as f:
        return [
            line.split()[4]
            for line in f
            if line.split()[4] == prefix or line.split()[4].startswith(prefix + "/")
        ]


def _code_binds(already: Sequence[Path]) -> list[Path]:
    """The checkout (and its venv) when it lives under /tmp, which the container replaces
    with its own tmpfs: code run inside (the agent, test helpers) must see it. CI may
    clone the repository anywhere, /tmp included."""
    repo = Path(__file__).resolve().parents[2]
    wanted = {repo, Path(sys.prefix).resolve()}
    return sorted(
        p for p in wanted
        if p.is_relative_to("/tmp")
        and not any(p.is_relative_to(q) for q in (*already, *(w for w in wanted if w != p)))
    )  # fmt: skip


def boot(
    base: Path,
    name: str | None = None,
    *,
    netns: str | None = None,
    binds_ro: Sequence[Path] = (),
) -> NspawnContainer:
    """Boot systemd in a fresh overlay container under ``base``; call :func:`shutdown`.

    ``netns`` names a network namespace (``ip netns add``) the container joins instead
    of a private, unconnected one. ``binds_ro`` are host directories shown read-only at
    the same path inside (the container's /tmp is its own tmpfs, and an overlay does not
    reliably show files created in its lower layer after it was mounted).
    """
    name = name or f"ef-{secrets.token_hex(4)}"
    base.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(base)], check=True)
    proc: subprocess.Popen[bytes] | None = None
    log = base.parent / f"{name}.console.log"
    try:
        for d in ("upper", "work", "merged"):
            (base / d).mkdir()
        subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir=/,upperdir={base}/upper,workdir={base}/work",
                str(base / "merged"),
            ],
            check=True,
        )
        _prepare_root(base / "merged")
        proc = _launch(name, base, log, netns, tuple(binds_ro))
        container = NspawnContainer(
            name, base, _wait_leader(proc, log), proc, log, netns, tuple(binds_ro)
        )
        _wait_running(container)
        return container
    except BaseException:
        _cleanup(name, base, proc)
        raise


def reboot(container: NspawnContainer) -> None:
    """Power the container off and boot it again on the same disk, as a host reboots:
    what it wrote under /etc and /var stays, its /run and /tmp start empty."""
    _power_off(container.name, container.proc)
    container.proc = _launch(
        container.name, container.base, container.log, container.netns, container.binds_ro
    )
    container.leader = _wait_leader(container.proc, container.log)
    _wait_running(container)


def power_cut_and_boot(container: NspawnContainer) -> None:
    """As :func:`reboot`, but without the orderly poweroff: SIGKILL to the container's
    PID 1 (the kernel then kills its whole PID namespace at once), as a power cut would."""
    os.kill(container.leader, signal.SIGKILL)
    container.proc.wait(STOP_TIMEOUT)
    reboot(container)


def _launch(
    name: str, base: Path, log: Path, netns: str | None, binds_ro: tuple[Path, ...]
) -> subprocess.Popen[bytes]:
    """Start systemd-nspawn booting ``base/merged``; the console goes to ``log``."""
    cgroups = _cgroup_dirs(name)
    for cg in cgroups:
        cg.mkdir(parents=True, exist_ok=True)
    # Join the cgroups in the shell that execs nspawn: two containers at the cgroup
    # root collide, and preexec_fn is not safe with threads.
    join = "; ".join(f"echo $$ > {cg}/cgroup.procs" for cg in cgroups)
    nspawn = [
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--console=read-only",
        *([f"--network-namespace-path=/run/netns/{netns}"] if netns else ["--private-network"]),
        *(f"--bind-ro={b}" for b in (*binds_ro, *_code_binds(binds_ro))),
        "-D",
        str(base / "merged"),
        "-M",
        name,
        "-b",
    ]
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["sh", "-c", f'{join}; exec "$@"', "sh", *nspawn],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_running(container: NspawnContainer) -> None:
    state = subprocess.run(
        [*container.systemctl_prefix, "is-system-running", "--wait"],
        capture_output=True,
        text=True,
        timeout=BOOT_TIMEOUT,
        check=False,
    ).stdout.strip()
    if state not in ("running", "degraded"):
        raise RuntimeError(
            f"container {container.name} is {state!r}: {container.log.read_text()[-2000:]}"
        )


def _wait_leader(proc: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {proc.returncode}: {log.read_text()}")
        for child in _children(proc.pid):
            if Path(f"/proc/{child}/root/run/systemd/private").exists():
                return child
        time.sleep(0.01)
    raise TimeoutError(f"container did not boot in {BOOT_TIMEOUT}s: {log.read_text()}")


def _cleanup(name: str, base: Path, proc: subprocess.Popen[bytes] | None) -> None:
    _power_off(name, proc)
    for mount in sorted(_mounts_under(base), key=len, reverse=True):
        subprocess.run(["umount", mount], check=True)
    with contextlib.suppress(OSError):
        base.rmdir()


def _power_off(name: str, proc: subprocess.Popen[bytes] | None) -> None:
    """Stop the container's systemd and whatever it left in its cgroups."""
    if proc is not None and proc.poll() is None:
        # nspawn turns SIGTERM into an orderly poweroff of the container's systemd.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for cg in _cgroup_dirs(name):
        for pid in _cgroup_pids(cg):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for cg in _cgroup_dirs(name):
        deadline = time.monotonic() + 5
        while True:
            try:
                _remove_cgroup(cg)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def shutdown(container: NspawnContainer) -> None:
    """Power the container off and assert that it left nothing behind on the host."""
    _cleanup(container.name, container.base, container.proc)
    assert container.proc.returncode is not None
    assert not _mounts_under(container.base), _mounts_under(container.base)
    assert not any(cg.exists() for cg in _cgroup_dirs(container.name))
    assert not Path(f"/proc/{container.leader}").exists()
    for parent in (r / CGROUP_PARENT for r in CGROUP_ROOTS):
        # Left for concurrent containers; removed when it is the last one.
        with contextlib.suppress(OSError):
            parent.rmdir()


@contextlib.contextmanager
def container_at(
    base: Path,
    *,
    netns: str | None = None,
    binds_ro: Sequence[Path] = (),
) -> Iterator[NspawnContainer]:
    container = boot(base, netns=netns, binds_ro=binds_ro)
    try:
        yield container
    finally:
        shutdown(container)


def require_nspawn() -> None:
    """Skip on a developer laptop without root or nspawn; never in CI, where it fails."""
    if os.geteuid() == 0 and shutil.which("systemd-nspawn") is not None:
        return
    why = "needs root and systemd-nspawn (apt-get install systemd-container)"
    if os.environ.get("CI"):
        pytest.fail(f"{why}: a skipped test is not a tested feature")
    pytest.skip(why)


@pytest.fixture(scope="module")
def systemd_container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NspawnContainer]:
    """One booted container per test module; tests use unique unit names in it."""
    require_nspawn()
    with container_at(tmp_path_factory.mktemp("nspawn") / "ct") as container:
        yield container


@pytest.fixture
def fresh_systemd_container(tmp_path: Path) -> Iterator[NspawnContainer]:
    """A container of its own for one test (boot ~0.3 s, poweroff ~2 s)."""
    require_nspawn()
    with container_at(tmp_path / "ct") as container:
        yield container


# -- several hosts: a bridge on the host, one network namespace per edge ------------------

NET_PREFIX = "10.213"
"""Private test range (TESTBED.md "Several hosts"); each network takes one random /24."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _link_exists(name: str) -> bool:
    return _ip("link", "show", "dev", name, check=False).returncode == 0


@dataclass
class EdgeNetwork:
    """A host bridge at ``host_ip`` and network namespaces wired to it by veth pairs.

    Services meant for the edges listen on ``host_ip``; a container joins an edge with
    ``boot(..., netns=edge)``. Traffic stays between the bridge and the namespaces.
    """

    tag: str
    subnet: str
    """``10.213.N`` without the host byte."""
    edges: dict[str, str] = field(default_factory=dict)
    """netns name -> its address."""

    @property
    def bridge(self) -> str:
        return f"efbr-{self.tag}"

    @property
    def host_ip(self) -> str:
        return f"{self.subnet}.1"

    def veth(self, index: int) -> str:
        return f"efv-{self.tag}-{index}"

    def add_edge(self) -> tuple[str, str]:
        """A new namespace with ``eth0`` on the bridge; returns (netns name, its address)."""
        index = len(self.edges)
        netns, address = f"ef-{self.tag}-{index}", f"{self.subnet}.{index + 10}"
        _ip("netns", "add", netns)
        self.edges[netns] = address
        _ip("link", "add", self.veth(index), "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", self.veth(index), "master", self.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "link", "set", "eth0", "up")
        return netns, address

    def leftovers(self) -> list[str]:
        names = [self.bridge, *(self.veth(i) for i in range(len(self.edges)))]
        left = [n for n in names if _link_exists(n)]
        left += [f"netns {n}" for n in self.edges if Path(f"/run/netns/{n}").exists()]
        return left


def _free_subnet() -> str:
    used = _ip("-4", "-o", "addr", "show").stdout
    for _ in range(50):
        subnet = f"{NET_PREFIX}.{secrets.randbelow(250) + 1}"
        if f" {subnet}." not in used:
            return subnet
    raise RuntimeError(f"no free /24 in {NET_PREFIX}.0.0/16")


@contextlib.contextmanager
def edge_network() -> Iterator[EdgeNetwork]:
    """Bridge + namespaces; teardown removes them all and asserts nothing is left."""
    net = EdgeNetwork(tag=secrets.token_hex(3), subnet=_free_subnet())
    try:
        _ip("link", "add", net.bridge, "type", "bridge")
        _ip("addr", "add", f"{net.host_ip}/24", "dev", net.bridge)
        _ip("link", "set", net.bridge, "up")
        yield net
    finally:
        for netns in net.edges:
            # Deleting the namespace destroys its veth end and with it the host end.
            _ip("netns", "del", netns, check=False)
        _ip("link", "del", net.bridge, check=False)
    deadline = time.monotonic() + 5
    while net.leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not net.leftovers(), net.leftovers()
