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

The table lives in the hub's database (hub/store/recipients.py); both commands run
where the database is, without the server.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.config import DEFAULT_CONFIG_PATH, load_config
from hub.store.recipients import RecipientsError, read_recipients, record_recipient

RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}")
"""An X25519 age recipient: bech32, human part ``age``."""


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


def record(database: Path, entry: Enrolled) -> None:
    """Remember what enrollment verified; a re-enrollment replaces the node's entry."""
    if RECIPIENT.fullmatch(entry.recipient) is None:
        raise RecipientsError(f"{entry.node}: {entry.recipient!r} is not an age recipient")
    record_recipient(database, entry.node, entry.recipient, entry.branch, entry.labels)


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


def select(database: Path, want: Selector) -> Listing:
    """Recorded recipients of matching nodes; see the module docstring."""
    if not database.exists():
        raise RecipientsError(f"database {database} does not exist (no node enrolled yet)")
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
    listing = select(cfg.hub.database, Selector(branch, labels, args.unverified))
    for warning in listing.warnings:
        print(f"edgefleet-hub recipients: {warning}", file=sys.stderr)
    for recipient in listing.recipients:
        print(recipient)
    return 0 if listing.recipients else 1
