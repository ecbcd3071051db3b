"""The stored JSON of a parsed status, without re-encoding it when the payload already is.

The hub stores :func:`common.status.status_json` of the validated status, never the raw
payload. But an agent encodes its status with the same encoder and layout, so its payload
is usually exactly that text already; re-encoding it costs the ingest a quarter of its
parse time. :data:`_CANONICAL` accepts only text the builder writes for some status (its
key order, no whitespace, no escapes, integers as the encoder writes them); the float
fields and drift_omitted, which a pattern cannot prove canonical, are compared with the
parsed values. Anything else (older agents, escapes, other number forms) is re-encoded:
this is a shortcut, never a second opinion. tests/test_fuzz_contract.py checks the
result equals ``status_json`` for any payload.
"""

from __future__ import annotations

import re
from typing import Final

from common.status import Status, status_json

_TEXT = r'"[^"\\\x00-\x1f]*"'
"""A string without escapes: the encoder writes it as it is (ensure_ascii off)."""
_OPT_TEXT = rf"(?:null|{_TEXT})"
_INT = r"(?:0|-?[1-9][0-9]*)"
_COUNT = r"(?:0|[1-9][0-9]*)"
_FLOAT = r"-?[0-9][0-9.e+-]*"
"""Only the shape: the value is compared with repr() of the parsed float."""


def _list(item: str) -> str:
    return rf"\[(?:{item}(?:,{item})*)?\]"


def _map(value: str) -> str:
    return rf"\{{(?:{_TEXT}:{value}(?:,{_TEXT}:{value})*)?\}}"


_DRIFT_ITEM = rf'\{{"target":{_TEXT},"subject":{_TEXT},"kind":{_TEXT},"detail":{_TEXT}\}}'
_PROBLEM = rf'\{{"target":{_TEXT},"subject":{_TEXT},"reason":{_TEXT}\}}'
# The layout of common.status.status_doc, key by key.
_CANONICAL: Final = re.compile(
    rf'\{{"schema":1,"node":{_TEXT},"seq":{_COUNT},"state":{_TEXT},"labels":{_map(_TEXT)},'
    rf'"version":{_OPT_TEXT},"branch":{_OPT_TEXT},"paths":{_list(_TEXT)},'
    rf'"desired":{_OPT_TEXT},"applied":{_OPT_TEXT},"last_good":{_OPT_TEXT},'
    rf'"reason":{_TEXT},"message":{_TEXT},"drift":{_list(_DRIFT_ITEM)},'
    rf'"drift_total":{_COUNT},"resources":{_map(_INT)},'
    rf'"health":\{{"ok":(?:true|false),"problems":{_list(_PROBLEM)}\}},'
    rf'"heartbeat":(?P<heartbeat>{_FLOAT}),"observed_at":(?P<observed_at>null|{_FLOAT})'
    rf'(?:,"drift_omitted":(?P<omitted>{_COUNT}))?(?:,"incarnation":{_TEXT})?'
    rf'(?:,"deferred_until":(?P<deferred>{_FLOAT}))?(?:,"recipient":{_TEXT})?\}}'
)


def _repr(value: float | None) -> str | None:
    return None if value is None else repr(value)


def stored_status_json(status: Status, payload: bytes) -> str:
    """``status_json(status)`` for ``status`` parsed from ``payload``: the payload's own
    text when it is exactly that, else the re-encoding."""
    text = payload.decode("utf-8")
    match = _CANONICAL.fullmatch(text)
    if match is not None:
        report = status.report
        omitted = report.drift_total - len(report.drift)
        observed = status.observed_at
        if (
            match["heartbeat"] == repr(status.heartbeat)
            and match["observed_at"] == ("null" if observed is None else repr(observed))
            and match["omitted"] == (str(omitted) if omitted else None)
            and match["deferred"] == _repr(report.deferred_until)
        ):
            return text
    return status_json(status)
