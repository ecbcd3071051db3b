"""``edgefleet-hub recipients`` on a real hub database: recorded (enrolled) recipients are
selected on the labels enrollment recorded, not on what nodes claim; a node reporting
another recipient is flagged; unenrolled nodes only with --unverified. The output is fed
to the real ``age -R``. The hub database is a SQLite file, then a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from common.status import status_json
from common.strict import parse_status
from hub.errors import HubError
from hub.recipients import Enrolled, HubDatabase, PgDatabase, RecipientsError, record
from hub.store import Batch, HubStore, StatusRow
from hub.store.factory import open_store


def age_key(directory: Path, name: str) -> tuple[Path, str]:
    path = directory / f"{name}.key"
    subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, check=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    return path, recipient


async def report(store: HubStore, node: str, labels: dict[str, str], recipient: str) -> None:
    doc = {"node": node, "labels": labels, "branch": "stable", "state": "synced"}
    doc["recipient"] = recipient
    now = time.time()
    row = StatusRow(
        node, "stable", "synced", 1, None, None, 0, 30, now, now + 90, now, json.dumps(doc), True
    )
    await store.write_batch(Batch(statuses=[row]))


def cli(
    fleet: Path, *args: str, python: tuple[str, ...] = ("-m", "hub.cli")
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *python, "recipients", "--config", str(fleet), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


NO_ASYNCPG = "import sys; sys.modules['asyncpg'] = None\n"
"""Run first in a Python without the postgres extra: importing asyncpg then fails."""


def write_fleet(tmp_path: Path, database: str) -> Path:
    """fleet.toml with ``[hub] database`` (a SQLite file or a URL), stages stable and canary."""
    path = tmp_path / "fleet.toml"
    path.write_text(
        f'[hub]\ndatabase = "{database}"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
        '[git]\nurl = "file:///nonexistent"\n'
        '[[stages]]\nname = "stable"\nbranch = "stable"\n'
        '[[stages]]\nname = "canary"\nbranch = "canary"\n'
    )
    return path


@pytest.fixture
def database(hub_database: Callable[[Path], str], tmp_path: Path) -> str:
    """``[hub] database`` of this test's backend: a SQLite file or a PostgreSQL URL."""
    return hub_database(tmp_path)


def where(database: str) -> HubDatabase:
    return PgDatabase(database) if "://" in database else Path(database)


@pytest.fixture
def fleet(tmp_path: Path, database: str) -> Path:
    return write_fleet(tmp_path, database)


@pytest.mark.both_backends
async def test_recipients_trust_enrollment_not_reports(
    tmp_path: Path, fleet: Path, database: str
) -> None:
    db = where(database)
    berlin_key, berlin = age_key(tmp_path, "berlin")
    _, paris = age_key(tmp_path, "paris")
    _, swapped = age_key(tmp_path, "swapped")
    _, rogue = age_key(tmp_path, "rogue")
    store = await open_store(Path(database), database if "://" in database else None)
    try:
        await asyncio.to_thread(record, db, Enrolled("b1", berlin, "stable", {"site": "berlin"}))
        await asyncio.to_thread(record, db, Enrolled("p1", paris, "stable", {"site": "paris"}))
        # p1 was compromised: it now claims Berlin and reports a key of its own choosing.
        await report(store, "p1", {"site": "berlin"}, swapped)
        await report(store, "b1", {"site": "berlin"}, berlin)
        await report(store, "x9", {"site": "berlin"}, rogue)  # never enrolled
    finally:
        await store.close()

    done = cli(fleet, "--label", "site=berlin")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [berlin]
    assert "x9: not enrolled, left out" in done.stderr

    done = cli(fleet, "--label", "site=paris")
    assert done.stdout.split() == [paris]
    assert f"p1: reports recipient {swapped}, enrolled with {paris}" in done.stderr

    done = cli(fleet, "--label", "site=berlin", "--unverified")
    assert done.stdout.split() == [berlin, rogue]
    assert "x9: unverified" in done.stderr

    assert cli(fleet, "--stage", "stable").stdout.split() == [berlin, paris]
    empty = cli(fleet, "--stage", "canary")
    assert (empty.returncode, empty.stdout) == (1, "")
    unknown = cli(fleet, "--stage", "nope")
    assert unknown.returncode == 1 and "no such stage" in unknown.stderr

    recipients = tmp_path / "berlin.txt"
    recipients.write_text(cli(fleet, "--label", "site=berlin").stdout)
    sealed = subprocess.run(
        ["age", "-R", str(recipients)], input=b"for berlin", capture_output=True, check=True
    ).stdout
    opened = subprocess.run(
        ["age", "-d", "-i", str(berlin_key)], input=sealed, capture_output=True, check=True
    )
    assert opened.stdout == b"for berlin"


def test_bad_input_is_a_clear_error(tmp_path: Path, fleet: Path) -> None:
    missing = cli(fleet)
    assert missing.returncode == 1 and "does not exist (no node enrolled yet)" in missing.stderr
    with pytest.raises(RecipientsError, match="is not an age recipient"):
        record(tmp_path / "hub.db", Enrolled("n", "ssh-ed25519 AAAA", "stable", {}))
    bad_label = cli(fleet, "--label", "site")
    assert bad_label.returncode == 1 and "give it as KEY=VALUE" in bad_label.stderr


def test_the_hub_keeps_the_reported_recipient() -> None:
    """The hub stores only the fields its strict parser knows: recipient must be one."""
    recipient = "age1" + "q" * 58
    payload = json.dumps({"schema": 1, "node": "n1", "seq": 3, "state": "synced",
                          "recipient": recipient}).encode()  # fmt: skip
    stored = json.loads(status_json(parse_status("n1", payload)))
    assert stored["recipient"] == recipient
    without = json.loads(status_json(parse_status("n1", payload.replace(b"recipient", b"x"))))
    assert "recipient" not in without, "old agents' statuses stay as they were"


def test_a_postgresql_database_that_is_down_is_a_clear_error(tmp_path: Path) -> None:
    """Nothing listens on port 1: both commands say which database (without its
    password) and why, with no traceback."""
    url = "postgresql://hub:hunter2@127.0.0.1:1/hub"
    listing = cli(write_fleet(tmp_path, url))
    assert listing.returncode == 1
    assert "cannot open database postgresql://hub:***@127.0.0.1:1/hub" in listing.stderr
    assert "Traceback" not in listing.stderr and "hunter2" not in listing.stderr
    _, recipient = age_key(tmp_path, "n1")
    with pytest.raises(HubError, match="cannot open database") as err:
        record(PgDatabase(url), Enrolled("n1", recipient, "stable", {}))
    assert "hunter2" not in str(err.value)


def test_without_the_postgres_extra_sqlite_works_and_postgresql_says_what_is_missing(
    tmp_path: Path,
) -> None:
    """A .deb without the extra: recording and listing on SQLite never load asyncpg; a
    postgresql:// hub gets one line naming the extra instead of a traceback."""
    _, recipient = age_key(tmp_path, "n1")
    on_sqlite = NO_ASYNCPG + (
        "from pathlib import Path\n"
        "from hub.recipients import Enrolled, Selector, record, select\n"
        "db = Path(sys.argv[1])\n"
        "record(db, Enrolled('n1', sys.argv[2], 'stable', {}))\n"
        "print(*select(db, Selector(None, {}, False)).recipients)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", on_sqlite, str(tmp_path / "hub.db"), recipient],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout.split()) == (0, [recipient]), done.stderr

    hub_cli = NO_ASYNCPG + "from hub.cli import main\nsys.exit(main())\n"
    listing = cli(write_fleet(tmp_path, "postgresql://hub@127.0.0.1:1/hub"), python=("-c", hub_cli))
    assert (listing.returncode, listing.stderr.strip()) == (
        1,
        "edgefleet-hub: [hub] database postgresql://hub@127.0.0.1:1/hub is PostgreSQL, but "
        "its driver is not installed: install the postgres extra "
        "(pip install 'asyncpg>=0.29' in edgefleet's venv)",
    )
