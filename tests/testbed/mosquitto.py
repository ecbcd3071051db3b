"""A real mosquitto broker per test (plain, password or TLS), stoppable and restartable.

``Mosquitto.stop()`` / ``start()`` keep the same port so clients can reconnect, which is
how tests simulate a broker outage.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.testbed.wait import wait_until

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> None:
    wait_until(lambda: listening(port, host), timeout, f"a listener on {host}:{port}", 0.01)


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path, ip: str = "127.0.0.1") -> TlsFiles:
        """A private CA and a server certificate for ``ip`` made with the openssl CLI."""
        directory.mkdir(parents=True, exist_ok=True)
        ca_key, ca = directory / "ca.key", directory / "ca.pem"
        key, csr, cert = (
            directory / "server.key",
            directory / "server.csr",
            directory / "server.pem",
        )
        ext = directory / "san.ext"
        ext.write_text(f"subjectAltName=IP:{ip},DNS:localhost\n")

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=edgefleet test CA",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca),
        )
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(csr),
        )
        run(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(cert),
        )
        return cls(ca=ca, cert=cert, key=key)


@dataclass
class Mosquitto:
    directory: Path
    port: int = field(default_factory=free_port)
    users: dict[str, str] = field(default_factory=dict)
    tls: TlsFiles | None = None
    acl: str | None = None
    extra: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            "per_listener_settings true",
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            "user root",
            "log_dest stderr",
            "log_type error",
            "max_packet_size 20000000",
        ]
        if self.users:
            pw = self.directory / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl = self.directory / "acl"
            acl.write_text(self.acl)
            lines.append(f"acl_file {acl}")
        if self.tls:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.cert}",
                f"keyfile {self.tls.key}",
            ]
        conf = self.directory / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n" + self.extra)
        return conf

    def start(self) -> None:
        conf = self._write_config()
        with (self.directory / "mosquitto.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log
            )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def _broker(directory: Path, **kwargs: object) -> Iterator[Mosquitto]:
    broker = Mosquitto(directory, **kwargs)  # type: ignore[arg-type]
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """Anonymous broker on a free loopback port."""
    yield from _broker(tmp_path / "mosquitto")


@pytest.fixture
def mosquitto_auth(tmp_path: Path) -> Iterator[Mosquitto]:
    """Broker requiring username/password: users ``node1``/``secret1``, ``hub``/``hubpw``."""
    yield from _broker(tmp_path / "mosquitto", users={"node1": "secret1", "hub": "hubpw"})


@pytest.fixture
def mosquitto_tls(tmp_path: Path) -> Iterator[Mosquitto]:
    """TLS-only broker with a private CA (``broker.tls.ca`` verifies it)."""
    tls = TlsFiles.create(tmp_path / "tls")
    yield from _broker(tmp_path / "mosquitto", tls=tls)
