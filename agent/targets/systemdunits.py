"""What a systemd unit is to the agent, without touching systemd: valid names and
subjects, templates, [Install] sections, the intent (enabled/started) a unit should have,
and how ``systemctl show`` properties read (running, state text, counters)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.changeset import Change
from common.wire import DriftItem, DriftKind

UNIT_SUFFIXES = frozenset(
    ("service", "socket", "timer", "path", "mount", "automount", "target", "slice", "swap")
)
MAX_NAME = 255
_NAME_CHARS = re.compile(r"[A-Za-z0-9:_.\-@]+")
DROPIN_SUFFIX = ".d"

CONTENT = "content"
"""Change detail: the bytes of the unit or of one of its drop-ins changed (reload + restart)."""
OPTIONS = "options"
"""Change detail: only enablement or started/stopped changed (no reload of bytes, no restart)."""
ADOPTED = "adopted"
"""Change detail: identical bytes were already on disk (resuming after a crash)."""
PENDING = "pending"

ENABLED_STATES = frozenset(("enabled", "enabled-runtime", "linked", "linked-runtime", "alias"))
MASKED_STATES = frozenset(("masked", "masked-runtime"))
REMOVED_SUFFIX = ".edgefleet-removed"
JOURNAL_LINES = 5


def unit_name_problem(name: str) -> str | None:
    """Why ``name`` is not a unit name systemd accepts (None when it is fine)."""
    if not name or len(name) > MAX_NAME:
        return f"length must be 1..{MAX_NAME}"
    if not _NAME_CHARS.fullmatch(name):
        return "only A-Z a-z 0-9 : _ . - @ are allowed"
    if ".." in name or name.startswith("."):
        return "must not start with '.' or contain '..'"
    stem, dot, suffix = name.rpartition(".")
    if not dot or suffix not in UNIT_SUFFIXES:
        return f"suffix must be one of {', '.join(sorted(UNIT_SUFFIXES))}"
    if not stem:
        return "the name before the suffix is empty"
    if "@" in stem:
        prefix, _, instance = stem.partition("@")
        if not prefix or "@" in instance:
            return "a template is 'name@.suffix', an instance 'name@instance.suffix'"
    return None


def is_template(unit: str) -> bool:
    """``foo@.service``: it has no instance, so it can be neither enabled nor started."""
    return unit.rpartition(".")[0].endswith("@")


def unit_of(subject: str) -> str:
    """The unit a subject configures: itself, or the unit of a drop-in."""
    head, sep, _ = subject.partition("/")
    return head[: -len(DROPIN_SUFFIX)] if sep else subject


def is_unit_file(subject: str) -> bool:
    return "/" not in subject


def subject_problem(subject: str) -> str | None:
    """Why a path under systemd/ is neither ``<unit>`` nor ``<unit>.d/<name>.conf``."""
    parts = subject.split("/")
    if len(parts) == 1:
        return unit_name_problem(subject)
    if len(parts) != 2 or not parts[0].endswith(DROPIN_SUFFIX):
        return "expected a unit file '<name>.<type>' or a drop-in '<unit>.d/<name>.conf'"
    problem = unit_name_problem(parts[0][: -len(DROPIN_SUFFIX)])
    if problem:
        return f"drop-in directory: {problem}"
    conf = parts[1]
    if not conf.endswith(".conf") or conf == ".conf" or conf.startswith("."):
        return "a drop-in must be named '<name>.conf'"
    if len(conf) > MAX_NAME or not _NAME_CHARS.fullmatch(conf):
        return "drop-in names may only use A-Z a-z 0-9 : _ . - @"
    return None


def has_install_section(data: bytes) -> bool:
    """True when the unit has an [Install] section that gives enable something to do."""
    section = ""
    for raw in data.decode("utf-8", errors="replace").splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif section == "[Install]" and line.split("=", 1)[0].strip() in (
            "WantedBy",
            "RequiredBy",
            "UpheldBy",
            "Alias",
            "Also",
        ):
            return True
    return False


@dataclass(frozen=True)
class Intent:
    enabled: bool
    started: bool

    def meta(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "started": self.started}


def change_details(change: Change) -> set[str]:
    return set(change.detail.split(", ")) if change.detail else set()


def running(props: Mapping[str, str]) -> bool:
    """Up, or a oneshot that finished successfully (RemainAfterExit=no ends inactive)."""
    if props.get("ActiveState") == "active":
        return True
    return (
        props.get("Type") == "oneshot"
        and props.get("ActiveState") == "inactive"
        and props.get("Result") == "success"
        and props.get("RemainAfterExit") == "no"
    )


def state_text(props: Mapping[str, str]) -> str:
    return (
        f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}"
        f" (Result={props.get('Result', '?')})"
    )


def matches(paths: Iterable[str], globs: Iterable[str]) -> bool:
    globs = list(globs)
    return any(fnmatch.fnmatchcase(p, g) for p in paths for g in globs)


def prop_int(raw: str | None) -> int:
    try:
        return int(raw or 0)
    except ValueError:
        return 0


def drift_item(subject: str, kind: DriftKind, detail: str) -> DriftItem:
    return DriftItem(target="systemd", subject=subject, kind=kind, detail=detail)
