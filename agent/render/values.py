"""Template context: ``values.toml`` of every path deep-merged, plus the built-in names.

Tables merge key by key in path order; for anything else the later path wins. A key
that is a table in one file and not a table in another cannot be merged: that is an
error naming both files and the key, never a silent pick. Pure logic (no I/O except
:func:`facts`), run in the rendering child.
"""

from __future__ import annotations

import copy
import platform
import socket
import tomllib
from pathlib import Path
from typing import Any

VALUES_FILE = "values.toml"
SECRETS_FILE = "secrets.toml.age"
LAYER_FILES = {"values": VALUES_FILE, "secrets": SECRETS_FILE}
"""Per-path files at the root of a repository path, by the request field that carries them."""
BUILTINS = frozenset({"node", "labels", "branch", "commit", "facts", "secrets"})
"""Names templates get from the agent; values.toml may not define them."""

_TYPE_NAMES = {
    dict: "a table",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
}


class MergeError(ValueError):
    """Two files disagree on what a key is (the message names both and the key)."""


def _kind(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), "a date/time")


def parse_toml(name: str, raw: bytes) -> dict[str, Any]:
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise MergeError(f"{name}: is not UTF-8 text") from err
    except tomllib.TOMLDecodeError as err:
        raise MergeError(f"{name}: invalid TOML: {err}") from err


def merge(layers: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Deep-merge ``(file name, table)`` layers in order; MergeError on a table clash."""
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for name, table in layers:
        _merge_into(merged, table, name, (), origins)
    return merged


def _merge_into(
    into: dict[str, Any],
    new: dict[str, Any],
    name: str,
    prefix: tuple[str, ...],
    origins: dict[tuple[str, ...], str],
) -> None:
    for key, value in new.items():
        path = (*prefix, key)
        old = into.get(key)
        if key in into and isinstance(old, dict) != isinstance(value, dict):
            first = next(origins[path[:n]] for n in range(len(path), 0, -1) if path[:n] in origins)
            raise MergeError(
                f"key {'.'.join(path)!r} is {_kind(old)} in {first} "
                f"but {_kind(value)} in {name}; cannot merge them"
            )
        if isinstance(old, dict) and isinstance(value, dict):
            _merge_into(old, value, name, path, origins)
            continue
        into[key] = copy.deepcopy(value)
        origins[path] = name


def _os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            fields[key.strip()] = value.strip().strip("\"'")
    return fields


def facts() -> dict[str, str]:
    """What the node says about itself: hostname, arch, OS id/version, kernel."""
    release = _os_release()
    return {
        "hostname": socket.gethostname(),
        "arch": platform.machine(),
        "os_id": release.get("ID", ""),
        "os_version": release.get("VERSION_ID", ""),
        "kernel": platform.release(),
    }
