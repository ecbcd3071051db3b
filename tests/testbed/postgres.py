"""A real PostgreSQL 15 server per test session, and a fresh database per test.

The cluster lives in a temp dir owned by ``postgres`` (initdb refuses to run as root),
listens on loopback with a socket in that dir, and runs with ``fsync=off`` (tests only).
``pg_database`` hands each test an empty database made from ``template0``. A test that
needs the server from a network namespace creates its own with ``also_on`` (a bridge
address and the subnet trusted there), never the shared one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hub.store import HubStore
from hub.store.factory import open_store
from tests.testbed.mosquitto import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Postgres:
    directory: Path
    port: int
    also_on: tuple[str, str] | None = None
    """Another address to listen on, and the subnet trusted there (``host ... trust``)."""

    def url(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        return subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.url(database),
             "-c", sql],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip

    def as_postgres(self, command: str) -> None:
        subprocess.run(
            ["su", "postgres", "-s", "/bin/sh", "-c", command],
            check=True, capture_output=True, timeout=60, cwd="/",
        )  # fmt: skip

    @classmethod
    def create(cls, also_on: tuple[str, str] | None = None) -> Postgres:
        """A new cluster in its own temp dir (owned by ``postgres``), started."""
        directory = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
        shutil.chown(directory, "postgres", "postgres")
        os.chmod(directory, 0o700)
        server = cls(directory, free_port(), also_on)
        server.as_postgres(f"{PG_BIN}/initdb -D {directory}/data -A trust -U postgres")
        if also_on is not None:
            with (directory / "data" / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {also_on[1]} trust\n")
        server.start()
        return server

    def start(self) -> None:
        data = self.directory / "data"
        listen = "127.0.0.1" + (f",{self.also_on[0]}" if self.also_on else "")
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses={listen} -c fsync=off "
            "-c max_connections=200"
        )
        self.as_postgres(
            f"{PG_BIN}/pg_ctl -D {data} -l {self.directory}/log -o '{options}' -w start"
        )

    def stop(self) -> None:
        self.as_postgres(f"{PG_BIN}/pg_ctl -D {self.directory / 'data'} -m immediate stop")

    def new_database(self, host: str = "127.0.0.1") -> str:
        """An empty database's URL (on ``host``, one of the addresses it listens on)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name, host)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 is missing: run ./dev test (it installs postgresql)")
    with postgres_server() as server:
        yield server


@contextlib.contextmanager
def postgres_server(also_on: tuple[str, str] | None = None) -> Iterator[Postgres]:
    """A started server, stopped and deleted at the end."""
    server = Postgres.create(also_on)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def pg_database(postgres: Postgres) -> str:
    """URL of a fresh, empty database on the session's server."""
    return postgres.new_database()


BACKENDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_backends: run the test's hub store on SQLite and on PostgreSQL"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_backends`` run once per store backend."""
    if metafunc.definition.get_closest_marker("both_backends") and (
        "hub_backend" in metafunc.fixturenames
    ):
        metafunc.parametrize("hub_backend", BACKENDS, indirect=True)


@pytest.fixture
def hub_backend(request: pytest.FixtureRequest) -> str:
    """The store backend of this test's hubs: SQLite unless the test is marked
    ``both_backends``."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def hub_database(hub_backend: str, request: pytest.FixtureRequest) -> Callable[[Path], str]:
    """``[hub] database`` for a hub whose files live in a given directory: a SQLite file
    there, or a fresh PostgreSQL database."""
    if hub_backend == "sqlite":
        return lambda directory: str(directory / "hub.db")
    server: Postgres = request.getfixturevalue("postgres")
    return lambda _directory: server.new_database()


@pytest.fixture
async def any_store(hub_database: Callable[[Path], str], tmp_path: Path) -> AsyncIterator[HubStore]:
    """An open, empty store of this test's backend."""
    database = hub_database(tmp_path)
    url = database if "://" in database else None
    store = await open_store(Path(database), url)
    yield store
    await store.close()
