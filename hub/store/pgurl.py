"""PostgreSQL URLs in messages: without their password. Kept apart from the driver so
commands that only name a database (enroll, recipients) need no asyncpg to say which."""

from __future__ import annotations

import re


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)
