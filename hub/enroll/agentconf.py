"""The node's agent.toml: a typed value, written as TOML, accepted by the agent's parser.

:class:`AgentToml` holds what enroll decides; :func:`render` writes it as TOML;
:func:`checked_text` then reads that text back with tomllib and
``agent.config.parse_config`` - the code the agent runs at start - and compares the
result with the configuration asked for, before anything reaches the host. A value
the agent would refuse (an empty label, a path with '..', an unknown URL scheme) is an
:class:`EnrollError`; so is one that does not come back as asked. This module is the
hub's one import of the agent (docs/design.md, "Layers").

No TOML writer dependency: enroll writes a fixed, flat shape (strings, booleans, lists
of strings, tables), which the small serializer below covers in a few lines, and every
text it produces is parsed back before use. A library would add a runtime dependency
to the hub and the .deb for that.
"""

from __future__ import annotations

import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TypeAlias

from agent.config import (
    AgentConfig,
    FilesConfig,
    GitConfig,
    K3sConfig,
    MqttConfig,
    TargetsConfig,
    TrustConfig,
    parse_config,
)
from agent.errors import ConfigError
from hub.enroll import EnrollError

ETC = Path("/etc/edgefleet")
HEADER = "Written by `edgefleet-hub enroll`; the next enrollment overwrites local edits."

Value: TypeAlias = "str | bool | tuple[str, ...] | Table"
Table: TypeAlias = "dict[str, Value]"


@dataclass(frozen=True)
class AgentToml:
    """What enrollment puts into a node's agent.toml (everything else keeps its default)."""

    node: str
    git_url: str
    branch: str
    paths: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    mqtt_url: str | None = None
    mqtt_password: bool = False
    """A password file is installed: the node logs in with its own name."""
    mqtt_ca: bool = False
    """The broker's CA is installed (only used with ``mqtt_url``)."""
    allowed_roots: tuple[str, ...] = ()
    k3s: bool = False
    etc: Path = ETC
    """The directory of agent.toml and the files it names, on the node."""

    @property
    def path(self) -> Path:
        return self.etc / "agent.toml"

    @property
    def allowed_signers(self) -> Path:
        return self.etc / "allowed_signers"

    @property
    def password_file(self) -> Path:
        return self.etc / "mqtt-password"

    @property
    def ca_file(self) -> Path:
        return self.etc / "mqtt-ca.pem"

    def named_files(self) -> tuple[Path, ...]:
        """The files this agent.toml refers to (the agent checks they exist)."""
        mqtt = self.mqtt_url is not None
        return (
            self.allowed_signers,
            *((self.password_file,) if mqtt and self.mqtt_password else ()),
            *((self.ca_file,) if mqtt and self.mqtt_ca else ()),
        )


def document(conf: AgentToml) -> Table:
    """The TOML document, in the order it is written."""
    doc: Table = {"node": conf.node}
    if conf.labels:
        doc["labels"] = dict(conf.labels)
    doc["git"] = {"url": conf.git_url, "branch": conf.branch, "paths": conf.paths}
    doc["trust"] = {"allowed_signers": str(conf.allowed_signers)}
    if conf.mqtt_url is not None:
        mqtt: Table = {"url": conf.mqtt_url}
        if conf.mqtt_password:
            mqtt |= {"username": conf.node, "password_file": str(conf.password_file)}
        if conf.mqtt_ca:
            mqtt["ca_file"] = str(conf.ca_file)
        doc["mqtt"] = mqtt
    targets: Table = {}
    if conf.allowed_roots:
        targets["files"] = {"allowed_roots": conf.allowed_roots}
    if conf.k3s:
        targets["k3s"] = {"enabled": True}
    if targets:
        doc["targets"] = targets
    return doc


def expected(conf: AgentToml) -> AgentConfig:
    """The configuration the agent must read from ``render(conf)``."""
    mqtt = MqttConfig()
    if conf.mqtt_url is not None:
        mqtt = MqttConfig(
            url=conf.mqtt_url,
            username=conf.node if conf.mqtt_password else None,
            password_file=conf.password_file if conf.mqtt_password else None,
            ca_file=conf.ca_file if conf.mqtt_ca else None,
        )
    return AgentConfig(
        path=conf.path,
        node=conf.node,
        labels=dict(conf.labels),
        git=GitConfig(url=conf.git_url, branch=conf.branch, paths=conf.paths),
        trust=TrustConfig(allowed_signers=conf.allowed_signers),
        mqtt=mqtt,
        targets=TargetsConfig(
            files=FilesConfig(allowed_roots=tuple(Path(r) for r in conf.allowed_roots)),
            k3s=K3sConfig(enabled=conf.k3s),
        ),
    )


def render(conf: AgentToml) -> str:
    return dumps(document(conf), HEADER)


def read_back(text: str, path: Path) -> AgentConfig:
    """What the agent makes of ``text`` as its config file at ``path``."""
    try:
        return parse_config(tomllib.loads(text), path)
    except tomllib.TOMLDecodeError as err:  # a serializer bug, never the operator's input
        raise EnrollError(f"agent.toml is not valid TOML: {err}") from err


def checked_text(conf: AgentToml) -> str:
    """agent.toml's text for ``conf``, after the agent's own parser read it back as asked.

    The files it names (allowed_signers, ...) are written later, so the check runs on a
    copy whose ``etc`` is a scratch directory holding empty stand-ins for them.
    """
    text = render(conf)
    with tempfile.TemporaryDirectory(prefix="edgefleet-enroll-") as scratch:
        staged = replace(conf, etc=Path(scratch))
        for path in staged.named_files():
            path.touch()
        try:
            got = read_back(render(staged), staged.path)
        except ConfigError as err:
            raise EnrollError(
                f"the agent would refuse this configuration: {conf.path}: {err.key}: {err.problem}"
            ) from err
    want = expected(staged)
    if got != want:
        differ = [f.name for f in fields(want) if getattr(got, f.name) != getattr(want, f.name)]
        raise EnrollError(f"{conf.path} does not read back as written: {', '.join(differ)}")
    return text


# -- a TOML writer for the shape above --------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def dumps(doc: Table, comment: str) -> str:
    """TOML text: a comment line, the top-level keys, then one [header] per table."""
    lines = [f"# {comment}"]
    _table(lines, (), doc)
    return "\n".join(lines) + "\n"


def _table(lines: list[str], name: tuple[str, ...], table: Table) -> None:
    keys = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    if name and keys:
        lines += ["", f"[{'.'.join(_key(n) for n in name)}]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in keys]
    for key, sub in table.items():
        if isinstance(sub, dict):
            _table(lines, (*name, key), sub)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_string(v) for v in value) + "]"
    raise TypeError(f"a table is not a value: {value!r}")


def _string(text: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates, e.g. from undecodable argv bytes
        raise EnrollError(f"{text!r} is not valid UTF-8 text") from err
    out = [
        _ESCAPES.get(ch) or (f"\\u{ord(ch):04x}" if ch < " " or ch == "\x7f" else ch) for ch in text
    ]
    return '"' + "".join(out) + '"'
