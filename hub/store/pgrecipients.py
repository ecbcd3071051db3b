"""Enrolled age recipients on PostgreSQL: what :mod:`hub.store.recipients` does on the
SQLite file, for the ``enroll`` and ``recipients`` commands of a PostgreSQL hub. Each
call opens a short-lived pool (migrating the schema as a hub start would) and closes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hub.errors import RecipientsError
from hub.store.pgdb import BindErrors, DbErrors, PgDb
from hub.store.pgurl import redact


async def record_recipient(
    url: str,
    ca_file: Path | None,
    node: str,
    recipient: str,
    branch: str,
    labels: Mapping[str, str],
) -> None:
    pool = await PgDb.connect(url, ca_file)
    try:
        await pool.execute(
            "INSERT INTO enrolled_recipients VALUES ($1, $2, $3, $4, $5) ON CONFLICT (node) "
            "DO UPDATE SET recipient = excluded.recipient, branch = excluded.branch, "
            "labels = excluded.labels, enrolled_at = excluded.enrolled_at",
            node, recipient, branch, json.dumps(dict(labels), sort_keys=True), time.time(),
        )  # fmt: skip
    except (*DbErrors, *BindErrors) as err:
        raise RecipientsError(f"cannot record the recipient in {redact(url)}: {err}") from err
    finally:
        await pool.close()


async def read_recipients(
    url: str, ca_file: Path | None
) -> tuple[list[tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
    """As :func:`hub.store.recipients.read_recipients`: (enrolled rows; reported per node)."""
    pool = await PgDb.connect(url, ca_file)
    try:
        enrolled = await pool.fetch(
            "SELECT node, recipient, branch, labels FROM enrolled_recipients"
        )
        reported = await pool.fetch(
            "SELECT node, branch, (doc -> 'labels')::text, doc ->> 'recipient' FROM nodes"
        )
    except DbErrors as err:
        raise RecipientsError(f"cannot read {redact(url)}: {err}") from err
    finally:
        await pool.close()
    return [tuple(r) for r in enrolled], {r[0]: tuple(r)[1:] for r in reported}
