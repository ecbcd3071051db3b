"""The hub's PostgreSQL connection over TLS, against a real PostgreSQL 15 with a
certificate from a private CA: verified with ``[hub] database_ca_file``, refused with
the wrong CA (a clear error naming the database, its password hidden), and the URL's
own ``sslmode`` honoured."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.errors import StoreError
from hub.store import Batch
from hub.store.pg import PgStore
from tests.test_hub_store import row
from tests.testbed.mosquitto import TlsFiles
from tests.testbed.postgres import Postgres


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Postgres, TlsFiles]]:
    """A server of its own (TLS is a server-wide setting), switched to TLS by reload."""
    server = Postgres.create()
    try:
        tls = TlsFiles.create(server.directory / "tls")  # the server reads them as postgres
        for path in (tls.cert.parent, tls.cert, tls.key):
            shutil.chown(path, "postgres", "postgres")
        tls.key.chmod(0o600)  # PostgreSQL refuses a key others can read
        server.psql(f"ALTER SYSTEM SET ssl_cert_file = '{tls.cert}'")
        server.psql(f"ALTER SYSTEM SET ssl_key_file = '{tls.key}'")
        server.psql("ALTER SYSTEM SET ssl = on")
        server.psql("SELECT pg_reload_conf()")
        server.psql("CREATE ROLE hub LOGIN PASSWORD 'hunter2'")
        server.psql("CREATE DATABASE fleet OWNER hub TEMPLATE template0")
        yield server, tls
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


def url(server: Postgres, query: str = "") -> str:
    return f"postgresql://hub:hunter2@127.0.0.1:{server.port}/fleet{query}"


async def test_the_server_is_verified_against_the_ca_file(
    tls_postgres: tuple[Postgres, TlsFiles],
) -> None:
    server, tls = tls_postgres
    store = await PgStore.open(url(server), tls.ca)
    try:
        await store.write_batch(Batch(statuses=[row("n1", 1, "synced", 1.0)]))
        assert await store.node_seqs() == {"n1": 1}
        assert await _encrypted(store)
    finally:
        await store.close()


async def test_a_server_of_another_ca_is_refused_clearly(
    tls_postgres: tuple[Postgres, TlsFiles], tmp_path: Path
) -> None:
    server, _tls = tls_postgres
    other = TlsFiles.create(tmp_path / "other")
    with pytest.raises(StoreError, match="cannot open database") as err:
        await PgStore.open(url(server), other.ca)
    assert "certificate verify failed" in str(err.value)
    assert "hunter2" not in str(err.value)


async def test_the_urls_sslmode_is_honoured(tls_postgres: tuple[Postgres, TlsFiles]) -> None:
    server, _tls = tls_postgres
    store = await PgStore.open(url(server, "?sslmode=require"))  # encrypted, not verified
    try:
        assert await _encrypted(store)
    finally:
        await store.close()
    plain = await PgStore.open(url(server, "?sslmode=disable"))
    try:
        assert not await _encrypted(plain)
    finally:
        await plain.close()
    with pytest.raises(StoreError, match="cannot open database"):
        await PgStore.open(url(server, "?sslmode=verify-full"))  # no CA given: unverifiable


async def _encrypted(store: PgStore) -> bool:
    """Whether the store's own connection to the server is TLS (the server says)."""
    rows = await store._all("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    return rows == [(True,)]
