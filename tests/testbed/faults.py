"""The fault campaign's bookkeeping and fault injectors (tests/test_faults.py).

``campaign`` (session fixture): one seed for the whole run (``EDGEFLEET_FAULT_SEED`` to
replay a failure, printed in the report header), a reproducible ``random.Random`` per
fault, trial counts scaled by ``EDGEFLEET_FAULT_SCALE`` (bench/reliability.py runs more),
and per fault the tally of trials, crashes, lost and corrupted, written as JSON after
every trial to ``EDGEFLEET_FAULT_REPORT`` (default: reliability.json in pytest's base
temp dir) and printed at the end of the run.

Injectors: :class:`GitFront`, a git:// listener in front of a real git daemon that
forwards, hangs or answers garbage; :func:`fill`, a full disk (on
:func:`tests.testbed.tmpfs.small_tmpfs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

SEED_ENV = "EDGEFLEET_FAULT_SEED"
SCALE_ENV = "EDGEFLEET_FAULT_SCALE"
REPORT_ENV = "EDGEFLEET_FAULT_REPORT"


@dataclass
class Tally:
    trials: int = 0
    crashes: int = 0
    """A process died or logged a traceback where it should have reported an error."""
    lost: int = 0
    """Committed data (files, statuses, events) missing at the end of the trial."""
    corrupted: int = 0
    """Unreadable state, torn or orphaned files, leftovers, duplicated events."""
    seconds: float = 0.0
    observed: dict[str, int] = field(default_factory=dict)
    """How often the fault landed where it hurts (e.g. mid-apply): evidence the trials bite."""
    notes: list[str] = field(default_factory=list)
    """Why each nonzero count was counted (the evidence for a failure)."""


@dataclass
class Campaign:
    seed: int
    scale: float
    report: Path
    tallies: dict[str, Tally] = field(default_factory=dict)

    def rng(self, fault: str) -> random.Random:
        """The same sequence for a fault whatever else ran before it."""
        return random.Random(f"{self.seed}/{fault}")

    def trials(self, base: int) -> int:
        return max(1, round(base * self.scale))

    def record(
        self,
        fault: str,
        started: float,
        *,
        crashes: int = 0,
        lost: int = 0,
        corrupted: int = 0,
        note: str = "",
    ) -> None:
        """Count one trial (``started``: its time.monotonic() at the start)."""
        t = self.tallies.setdefault(fault, Tally())
        t.trials += 1
        t.crashes += crashes
        t.lost += lost
        t.corrupted += corrupted
        t.seconds += time.monotonic() - started
        if crashes or lost or corrupted:
            t.notes.append(f"trial {t.trials}: {note}"[:2000])
        self.write()

    def observe(self, fault: str, what: str) -> None:
        observed = self.tallies.setdefault(fault, Tally()).observed
        observed[what] = observed.get(what, 0) + 1

    def check(self, fault: str) -> None:
        t = self.tallies[fault]
        assert (t.crashes, t.lost, t.corrupted) == (0, 0, 0), (
            f"{fault}: {t.trials} trials, {t.crashes} crashes, {t.lost} lost, "
            f"{t.corrupted} corrupted (replay with {SEED_ENV}={self.seed}):\n" + "\n".join(t.notes)
        )

    def write(self) -> None:
        doc = {
            "seed": self.seed,
            "scale": self.scale,
            "faults": {name: asdict(t) for name, t in self.tallies.items()},
        }
        self.report.parent.mkdir(parents=True, exist_ok=True)
        self.report.write_text(json.dumps(doc, indent=2) + "\n")


def _seed() -> int:
    raw = os.environ.get(SEED_ENV)
    return int(raw) if raw else secrets.randbits(32)


_SEED = _seed()
_CAMPAIGNS: list[Campaign] = []


def pytest_report_header() -> str:
    return f"fault campaign seed: {_SEED} (replay: {SEED_ENV}={_SEED})"


@pytest.fixture(scope="session")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    default = tmp_path_factory.getbasetemp() / "reliability.json"
    made = Campaign(
        seed=_SEED,
        scale=float(os.environ.get(SCALE_ENV) or 1),
        report=Path(os.environ.get(REPORT_ENV) or default),
    )
    _CAMPAIGNS.append(made)
    return made


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for c in _CAMPAIGNS:
        if not c.tallies:
            continue
        terminalreporter.section(f"fault campaign (seed {c.seed}, report {c.report})")
        for name, t in c.tallies.items():
            terminalreporter.write_line(
                f"{name:<34} trials {t.trials:>3}  crashes {t.crashes}  lost {t.lost}  "
                f"corrupted {t.corrupted}  ({t.seconds:.0f}s)"
                + "".join(f"; {what}: {n}" for what, n in t.observed.items())
            )


# -- a Git server that misbehaves ------------------------------------------------------


class GitFront:
    """A git:// listener in front of a real git daemon.

    :meth:`set` a mode (applied when a connection is accepted): ``forward`` (proxy to the
    daemon), ``hang`` (accept and never answer), ``garbage`` (random bytes),
    ``truncated`` (a pkt-line cut short, then EOF), ``badlength`` (a pkt-line header that
    is not hex), ``close`` (EOF at once); ``spare`` connections are forwarded first (an
    agent poll is ls-remote, then fetch: spare=1 breaks the fetch only).
    """

    MODES = ("hang", "garbage", "truncated", "badlength", "close")

    def __init__(self, upstream_port: int, rng: random.Random) -> None:
        self.upstream_port = upstream_port
        self.rng = rng
        self.mode = "forward"
        self._spare = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="git-front", daemon=True)
        self._thread.start()

    def url(self, name: str = "fleet.git") -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def set(self, mode: str, spare: int = 0) -> None:
        with self._lock:
            self.mode, self._spare = mode, spare

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(5)
        self._drop_connections()

    def _drop_connections(self) -> None:
        with self._lock:
            socks, self._open = self._open, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._open.append(conn)
                mode = "forward" if self._spare > 0 else self.mode
                self._spare -= 1
            payload = self._payload(mode)
            threading.Thread(
                target=self._serve, args=(conn, mode, payload), name=f"git-front-{mode}",
                daemon=True,
            ).start()  # fmt: skip

    def _payload(self, mode: str) -> bytes:
        """Chosen in the accept thread so the bytes sent follow the seed."""
        if mode == "garbage":
            return self.rng.randbytes(self.rng.randint(1, 4096))
        if mode == "truncated":  # a ref advertisement line cut anywhere
            line = b"0000" + b"a" * 40 + b" HEAD\0multi_ack side-band-64k ofs-delta\n"
            line = b"%04x" % len(line) + line[4:]
            return line[: self.rng.randint(1, len(line) - 1)]
        if mode == "badlength":
            return b"zz" + self.rng.randbytes(self.rng.randint(2, 64))
        return b""

    def _serve(self, conn: socket.socket, mode: str, payload: bytes) -> None:
        with conn:
            if mode == "forward":
                self._forward(conn)
                return
            if mode == "hang":
                self._stop.wait()
                return
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                conn.recv(65536)  # the client's request line
                conn.sendall(payload)

    def _forward(self, conn: socket.socket) -> None:
        """Relay both ways; an EOF from one side is passed on as a half-close (git clients
        may shut down their side after the request and still read the answer)."""
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            return
        with upstream, selectors.DefaultSelector() as sel:
            sel.register(conn, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, conn)
            open_sides = 2
            while open_sides and not self._stop.is_set():
                for key, _ in sel.select(timeout=0.5):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    try:
                        data = src.recv(65536)
                        if data:
                            dst.sendall(data)
                            continue
                        sel.unregister(src)
                        open_sides -= 1
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        return


@pytest.fixture
def git_front_factory() -> Iterator[list[GitFront]]:
    """Append GitFronts to the yielded list; all are closed at teardown."""
    fronts: list[GitFront] = []
    yield fronts
    for front in fronts:
        front.close()


# -- a full disk ---------------------------------------------------------------------------


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> Path:
    """Fill the file system holding ``path`` until about ``leave`` bytes remain free."""
    filler = path / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(free_bytes(path) - leave, 1))
    finally:
        os.close(fd)
    return filler
