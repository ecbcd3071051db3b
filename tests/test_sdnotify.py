"""agent.sdnotify against real unix datagram sockets, and against a real systemd."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import Notifier
from tests.testbed.nspawn import NspawnContainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_ready_status_watchdog_stopping(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("synced at abc")
    assert sock.recv(4096) == b"READY=1\nSTATUS=synced at abc"
    assert notifier.status("two\nlines")
    assert sock.recv(4096) == b"STATUS=two lines"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_abstract_socket() -> None:
    name = f"edgefleet-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.send("READY=1")
        assert sock.recv(4096) == b"READY=1"
        notifier.close()


def test_without_systemd_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval is None


def test_dead_socket_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert len([r for r in caplog.records if "cannot notify" in r.message]) == 1
    notifier.close()


def test_watchdog_interval() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    mine = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval == 2.0
    # A watchdog meant for another process (we are a child of the service) is not ours.
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "garbage"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None


def test_module_functions_use_the_process_environment(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    code = (
        "from agent import sdnotify; "
        "print(sdnotify.watchdog_interval()); "
        "sdnotify.notify('READY=1', 'STATUS=up')"
    )
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "8000000"}
    env.pop("WATCHDOG_PID", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "4.0"
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_real_systemd_accepts_ready_and_watchdog(systemd_container: NspawnContainer) -> None:
    """A Type=notify unit using agent.sdnotify becomes active only after READY=1."""
    ct = systemd_container
    unit = f"sdnotify-{secrets.token_hex(3)}.service"
    script = (
        "import time\n"
        "from agent import sdnotify\n"
        "interval = sdnotify.watchdog_interval()\n"
        "sdnotify.notify('READY=1', f'STATUS=watchdog every {interval}s')\n"
        "while True:\n"
        "    sdnotify.notify('WATCHDOG=1')\n"
        "    time.sleep(interval)\n"
    )
    # The container's /tmp is its own tmpfs: put the script where it sees it.
    script_path = ct.root / "srv" / f"{unit}.py"
    script_path.parent.mkdir(exist_ok=True)
    script_path.write_text(script)
    (ct.unit_dir / unit).write_text(
        "[Service]\nType=notify\nNotifyAccess=main\nWatchdogSec=2\n"
        f"Environment=PYTHONPATH={REPO}\n"
        f"ExecStart={sys.executable} /srv/{unit}.py\n"
    )
    ct.run("systemctl", "daemon-reload")
    ct.run("systemctl", "start", unit)  # returns only once READY=1 arrived
    props = ct.show(unit, "ActiveState", "StatusText", "WatchdogUSec")
    assert props["ActiveState"] == "active"
    assert props["StatusText"] == "watchdog every 1.0s"
    # systemd stamps every WATCHDOG=1 it accepts; wait for the next ping (~1 s).
    first = ct.show(unit, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
    deadline = time.monotonic() + 10
    while ct.show(unit, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"] == first:
        assert time.monotonic() < deadline, "no watchdog ping reached systemd"
        time.sleep(0.1)
    assert ct.show(unit, "NRestarts", "ActiveState") == {"NRestarts": "0", "ActiveState": "active"}
    ct.run("systemctl", "stop", unit)
