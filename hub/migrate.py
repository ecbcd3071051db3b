"""``edgefleet-hub migrate --from hub.db --to postgresql://...``: move a single SQLite
hub onto PostgreSQL (then point ``[hub] database`` at the URL and start the replicas).

asyncpg is imported only when the command runs: other commands stay light."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from hub.errors import ConfigError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "migrate",
        help="copy a SQLite hub database into an empty PostgreSQL database",
        description=__doc__,
    )
    p.add_argument("--from", dest="source", type=Path, required=True, metavar="HUB_DB",
                   help="the single hub's SQLite file; stop that hub first")  # fmt: skip
    p.add_argument("--to", dest="target", required=True, metavar="URL",
                   help="postgresql://user@host/db, empty (the schema is created)")  # fmt: skip
    p.add_argument("--ca-file", type=Path, help="CA of the PostgreSQL server's certificate")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not str(args.target).startswith(("postgresql://", "postgres://")):
        raise ConfigError("migrate", "--to", f"{args.target!r} is not a postgresql:// URL")
    if not args.source.is_file():
        raise ConfigError("migrate", "--from", f"{args.source}: no such SQLite database")
    from hub.store.pgurl import postgres_driver  # noqa: PLC0415

    with postgres_driver(args.target):
        from hub.store.pgcopy import copy_to_postgres  # noqa: PLC0415

    copied = asyncio.run(copy_to_postgres(args.source, args.target, args.ca_file))
    print("copied " + ", ".join(f"{n} {table}" for table, n in copied.items()))
    return 0
