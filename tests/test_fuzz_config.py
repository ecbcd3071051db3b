"""Fuzzing both config parsers (agent.toml, fleet.toml) with what tomllib can return.

Each case starts from a complete valid document and replaces, removes or adds keys at
any depth with any TOML value (huge integers, inf/nan, dates, nested tables, odd text).
Property: the parser returns a config or raises its ConfigError naming the file and the
key, never any other exception.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import config as agent_config
from agent.errors import ConfigError as AgentConfigError
from hub import config as hub_config
from hub.errors import ConfigError as HubConfigError
from tests.testbed.fuzzing import fuzz, mutated


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the files the configs name (keys, CAs, secrets)."""
    root = tmp_path_factory.mktemp("fuzzconf")
    for name in ("key", "ca", "secret", "signers"):
        (root / name).write_text("x\n")
    return root


def agent_doc(d: Path) -> dict[str, Any]:
    return {
        "node": "pi-01", "labels": {"site": "berlin"}, "state_dir": str(d / "state"),
        "git": {"url": "ssh://git@h/fleet.git", "branch": "stable", "paths": ["common", "x/y"],
                "interval": "1m", "timeout": 30, "ssh_key": str(d / "key"),
                "known_hosts": str(d / "key"), "token_file": str(d / "secret"),
                "ca_file": str(d / "ca")},
        "trust": {"allowed_signers": str(d / "signers"), "require_signed": True,
                  "non_fast_forward": "known-good"},
        "mqtt": {"url": "mqtts://broker:8883", "username": "u", "password_file": str(d / "secret"),
                 "ca_file": str(d / "ca"), "client_cert": str(d / "key"),
                 "client_key": str(d / "key"), "protocol": "5", "keepalive": 60,
                 "heartbeat": "30s", "outbox_max": 1000},
        "targets": {"files": {"enabled": True, "allowed_roots": [str(d / "root")],
                              "max_file_size": 1000, "max_total_size": 10_000},
                    "systemd": {"enabled": True, "unit_dir": str(d / "units"),
                                "systemctl": ["systemctl"]},
                    "k3s": {"enabled": False, "kubeconfig": "/etc/k3s.yaml",
                            "namespaces": ["default"], "allow_cluster_scoped": False}},
        "drift": {"mode": "report", "interval": "5m"},
        "health": {"timeout": "1m", "settle": 5},
    }  # fmt: skip


def hub_doc(d: Path) -> dict[str, Any]:
    return {
        "hub": {"listen": "127.0.0.1:8080", "database": "hub.db", "token_file": str(d / "secret"),
                "heartbeat": 30, "stale_after": "90s", "events_max_age": "30d",
                "events_max": 1000},
        "mqtt": {"url": "mqtt://127.0.0.1:1883", "client_id": "hub-1", "shared": True,
                 "session_expiry": "7d", "keepalive": 30, "protocol": "auto"},
        "git": {"url": "file:///srv/fleet.git", "ssh_key": str(d / "key"), "interval": 30,
                "webhook_secret_file": str(d / "secret"), "timeout": "30s"},
        "stages": [
            {"name": "canary", "branch": "canary"},
            {"name": "stable", "branch": "stable", "promote_from": "canary", "auto": True,
             "auto_rollback": True, "window": "mon-fri 09:00-17:00",
             "gate": {"min_nodes": 1, "min_ready_ratio": 0.9, "max_failed": 0, "soak": "10m"}},
        ],
    }  # fmt: skip


def check_error(err: Any, path: Path) -> None:
    assert isinstance(err, AgentConfigError | HubConfigError)
    message = str(err)
    assert err.path == str(path) and message.startswith(f"{path}: ")
    assert err.key and f": {err.key}: " in message, message


def test_valid_seeds_parse(files: Path) -> None:
    """The mutations start from valid documents (else they would only test refusals)."""
    agent_config.parse_config(agent_doc(files), files / "agent.toml")
    hub_config.parse_config(hub_doc(files), files / "fleet.toml")


PARSERS = {
    "agent.toml": (agent_doc, agent_config.parse_config, AgentConfigError),
    "fleet.toml": (hub_doc, hub_config.parse_config, HubConfigError),
}


@pytest.mark.parametrize("name", PARSERS)
@fuzz(2000)
@given(data=st.data())
def test_config_parses_or_names_file_and_key(files: Path, name: str, data: st.DataObject) -> None:
    make_doc, parse, error = PARSERS[name]
    doc = data.draw(mutated(make_doc(files)))
    path = files / name
    try:
        parse(doc, path)
    except error as err:
        check_error(err, path)
