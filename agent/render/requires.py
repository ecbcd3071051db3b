"""``[requires] agent = ">= 0.2"`` in a path's edgefleet.toml: refuse commits for newer agents.

An agent older than a feature the commit relies on (templates, secrets) would place
``app.conf.j2`` as it is and report synced; agents from 0.2 on read this key and refuse
such a commit, agents before it refuse the unknown key. Specifiers are a comma-separated
list of ``>=``, ``>``, ``<=``, ``<``, ``==``, ``!=`` and a dotted version.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.errors import SourceError

_SPEC = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*)\s*")
_OPERATORS: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}


def _version(text: str) -> tuple[int, ...]:
    """``0.2`` and ``0.2.0`` compare equal: trailing zeros are dropped."""
    parts = [int(p) for p in re.findall(r"\d+", text.split("+", maxsplit=1)[0])[:3]]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def check_requires(origin: str, raw: Any, version: str = __version__) -> None:
    """SourceError when ``[requires]`` is malformed or excludes ``version``."""
    where = f"{origin}/edgefleet.toml: requires"
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise SourceError(f"{where}: must be a table")
    raw = dict(raw)
    spec = raw.pop("agent", None)
    if raw:
        raise SourceError(f"{where}.{sorted(raw)[0]}: unknown key")
    if spec is None:
        return
    if not isinstance(spec, str) or not spec.strip():
        raise SourceError(f'{where}.agent: must be a version specifier such as ">= 0.2"')
    have = _version(version)
    for clause in spec.split(","):
        match = _SPEC.fullmatch(clause)
        if match is None:
            raise SourceError(
                f'{where}.agent: {clause.strip()!r} is not a specifier such as ">= 0.2"'
            )
        op, want = match.groups()
        if not _OPERATORS[op](have, _version(want)):
            raise SourceError(
                f"{origin}: needs edgefleet-agent {spec.strip()}, this node runs {version}; "
                "upgrade the agent"
            )
