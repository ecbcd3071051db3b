"""What a command may say about a PostgreSQL database without its driver: the URL
without its password, and a one-line error when asyncpg (the optional ``postgres``
extra) is missing. Kept apart from the driver so commands that only name a database
(enroll, recipients), and a SQLite hub, need no asyncpg."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from hub.errors import StoreError


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


@contextmanager
def postgres_driver(url: str) -> Iterator[None]:
    """Around the import of a PostgreSQL store module: a host without asyncpg gets one
    line naming the extra instead of a traceback."""
    try:
        yield
    except ModuleNotFoundError as err:
        if err.name != "asyncpg":
            raise
        raise StoreError(
            f"[hub] database {redact(url)} is PostgreSQL, but its driver is not installed: "
            "install the postgres extra (pip install 'asyncpg>=0.29' in edgefleet's venv)"
        ) from err
