"""Age recipients of the fleet: recorded at enrollment, listed for encrypting secrets.

A node's labels and recipient in its status are self-reported: a compromised node could
claim ``site=berlin`` and a recipient of the attacker's choosing. ``edgefleet-hub enroll``
therefore runs ``edgefleet-agent keygen`` on the host over the verified SSH channel and
records (node, recipient, stage branch, labels) in the hub's database, in the table below.
``edgefleet-hub recipients`` selects on those recorded values, so that

    age -R <(edgefleet-hub recipients --label site=berlin) -o token.age token

encrypts for the enrolled Berlin nodes only. A node whose reported recipient differs
from the recorded one is flagged on stderr; nodes never enrolled are listed (selected on
what they report) only with ``--unverified``.

The table lives in the hub's database: the SQLite file (hub/store/recipients.py) or
PostgreSQL (hub/store/pgrecipients.py); both commands run where they reach it, without
the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.config import DEFAULT_CONFIG_PATH, HubConfig, load_config
from hub.errors import RecipientsError

RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}")
"""An X25519 age recipient: bech32, human part ``age``."""


@dataclass(frozen=True)
class PgDatabase:
    """A PostgreSQL hub's database, as ``[hub] database`` and ``database_ca_file`` say."""

    url: str
    ca_file: Path | None = None

    def __str__(self) -> str:
        from hub.store.pgurl import redact  # noqa: PLC0415 (client commands stay light)

        return redact(self.url)


HubDatabase = Path | PgDatabase
"""Where recipients are kept: the SQLite file, or PostgreSQL."""


@dataclass(frozen=True)
class Enrolled:
    node: str
    recipient: str
    branch: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Listing:
    recipients: list[str]
    """One line each, for ``age -R``."""
    warnings: list[str]
    """Mismatches and unverified nodes, for stderr."""


def record(database: HubDatabase, entry: Enrolled) -> None:
    """Remember what enrollment verified; a re-enrollment replaces the node's entry."""
    if RECIPIENT.fullmatch(entry.recipient) is None:
        raise RecipientsError(f"{entry.node}: {entry.recipient!r} is not an age recipient")
    fields = (entry.node, entry.recipient, entry.branch, entry.labels)
    # The store modules load only here: client commands stay light, asyncpg optional.
    if isinstance(database, PgDatabase):
        from hub.store.pgurl import postgres_driver  # noqa: PLC0415

        with postgres_driver(database.url):
            from hub.store import pgrecipients  # noqa: PLC0415

        asyncio.run(pgrecipients.record_recipient(database.url, database.ca_file, *fields))
    else:
        from hub.store.recipients import record_recipient  # noqa: PLC0415

        record_recipient(database, *fields)


def _labels(raw: str | None) -> dict[str, str]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _matches(branch: str | None, labels: Mapping[str, str], want: Selector) -> bool:
    if want.branch is not None and branch != want.branch:
        return False
    return all(labels.get(k) == v for k, v in want.labels.items())


@dataclass(frozen=True)
class Selector:
    branch: str | None
    labels: Mapping[str, str]
    unverified: bool


def select(database: HubDatabase, want: Selector) -> Listing:
    """Recorded recipients of matching nodes; see the module docstring."""
    if isinstance(database, PgDatabase):
        from hub.store.pgurl import postgres_driver  # noqa: PLC0415 (as in record)

        with postgres_driver(database.url):
            from hub.store import pgrecipients  # noqa: PLC0415

        enrolled, reported = asyncio.run(
            pgrecipients.read_recipients(database.url, database.ca_file)
        )
    else:
        if not database.exists():
            raise RecipientsError(f"database {database} does not exist (no node enrolled yet)")
        from hub.store.recipients import read_recipients  # noqa: PLC0415

        enrolled, reported = read_recipients(database)
    out, warnings = [], []
    for node, recipient, branch, labels in sorted(enrolled):
        if not _matches(branch, _labels(labels), want):
            continue
        out.append(recipient)
        says = reported.get(node, (None, None, None))[2]
        if says is not None and says != recipient:
            warnings.append(
                f"{node}: reports recipient {says}, enrolled with {recipient} "
                "(key replaced or node compromised: re-enroll after checking it)"
            )
    known = {row[0] for row in enrolled}
    for node, (branch, labels, says) in sorted(reported.items()):
        if node in known or says is None or not _matches(branch, _labels(labels), want):
            continue
        if want.unverified and RECIPIENT.fullmatch(says):
            out.append(says)
            warnings.append(f"{node}: unverified (not enrolled), recipient as it reports it")
        elif not want.unverified:
            warnings.append(f"{node}: not enrolled, left out (--unverified lists it)")
    return Listing(out, warnings)


def recipients_database(cfg: HubConfig) -> HubDatabase:
    """The hub's database, where recipients are kept."""
    if cfg.hub.database_url is not None:
        return PgDatabase(cfg.hub.database_url, cfg.hub.database_ca_file)
    return cfg.hub.database


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "recipients",
        parents=[common],
        help="age recipients of enrolled nodes, one per line (for age -R)",
    )
    p.add_argument("--stage", help="only nodes enrolled into this stage")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="only nodes enrolled with this label (repeatable)")  # fmt: skip
    p.add_argument(
        "--unverified",
        action="store_true",
        help="also nodes never enrolled, selected on what they report (trust them first)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config or DEFAULT_CONFIG_PATH)
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipientsError(f"--label {item!r}: give it as KEY=VALUE")
        labels[key] = value
    branch = None
    if args.stage:
        stage = cfg.stage(args.stage)
        if stage is None:
            raise RecipientsError(f"--stage {args.stage!r}: no such stage in {cfg.path}")
        branch = stage.branch
    listing = select(recipients_database(cfg), Selector(branch, labels, args.unverified))
    for warning in listing.warnings:
        print(f"edgefleet-hub recipients: {warning}", file=sys.stderr)
    for recipient in listing.recipients:
        print(recipient)
    return 0 if listing.recipients else 1
