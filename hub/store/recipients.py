"""Enrolled age recipients in the hub's database: written by ``enroll`` and read by the
``recipients`` command with plain sqlite3 (both run next to the database, without the
server). The table is created on first use, independent of the store's migrations."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hub.errors import HubError

SCHEMA = """CREATE TABLE IF NOT EXISTS enrolled_recipients (
    node TEXT PRIMARY KEY,
    recipient TEXT NOT NULL,
    branch TEXT NOT NULL,
    labels TEXT NOT NULL,
    enrolled_at REAL NOT NULL
) WITHOUT ROWID"""


class RecipientsError(HubError):
    """The database cannot be read or written, or a recipient is malformed."""


def _connect(database: Path, write: bool) -> sqlite3.Connection:
    try:
        if write:
            database.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(database, timeout=5.0, isolation_level=None)
        else:
            db = sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=5.0)
        db.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as err:
        raise RecipientsError(f"cannot open database {database}: {err}") from err
    return db


def record_recipient(
    database: Path, node: str, recipient: str, branch: str, labels: Mapping[str, str]
) -> None:
    db = _connect(database, write=True)
    try:
        db.execute(SCHEMA)
        db.execute(
            "INSERT OR REPLACE INTO enrolled_recipients VALUES (?, ?, ?, ?, ?)",
            (node, recipient, branch, json.dumps(dict(labels), sort_keys=True), time.time()),
        )
    except sqlite3.Error as err:
        raise RecipientsError(f"cannot record the recipient in {database}: {err}") from err
    finally:
        db.close()


def _rows(db: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):  # nothing enrolled / nothing reported yet
            return []
        raise


def read_recipients(
    database: Path,
) -> tuple[list[tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
    """(enrolled rows: node, recipient, branch, labels JSON; reported per node: branch,
    labels JSON, recipient) — what enrollment verified and what nodes say."""
    db = _connect(database, write=False)
    try:
        enrolled = _rows(db, "SELECT node, recipient, branch, labels FROM enrolled_recipients")
        reported = {
            r[0]: r[1:]
            for r in _rows(
                db,
                "SELECT node, branch, json_extract(doc, '$.labels'), "
                "json_extract(doc, '$.recipient') FROM nodes",
            )
        }
    except sqlite3.Error as err:
        raise RecipientsError(f"cannot read {database}: {err}") from err
    finally:
        db.close()
    return enrolled, reported
