"""What the fuzz suite (tests/test_fuzz_*.py) found, one plain example each: every one of
these raised something other than the parser's own error (a traceback for the operator)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config as parse_agent_config
from agent.desired import DesiredFile, parse_options
from agent.errors import ConfigError as AgentConfigError
from agent.errors import PlanError, SourceError
from agent.k8s import manifests
from common.durations import DurationError, parse_duration
from hub.config import load_config as load_hub_config
from hub.config import parse_config as parse_hub_config
from hub.errors import ConfigError as HubConfigError

HUGE = int("f" * 4000, 16)
"""A TOML hex literal: over 4300 decimal digits, which repr() refuses to print."""


def agent_doc(**tables: Any) -> dict[str, Any]:
    return {"node": "pi-01", "git": {"url": "file:///srv/fleet.git", "paths": ["common"]},
            "trust": {"require_signed": False}, **tables}  # fmt: skip


@pytest.mark.parametrize(
    ("tables", "key", "problem"),
    [
        ({"mqtt": {"url": "mqtt://[::1"}}, "mqtt.url", "is not a URL"),
        ({"git": {"url": "ssh://[::1/x", "paths": ["c"]}}, "git.url", "is not a URL"),
        ({"mqtt": {"ca_file": "/" + "a" * 300}}, "mqtt.ca_file", "cannot be checked"),
        ({"mqtt": {"keepalive": 10**400}}, "mqtt.keepalive", "beyond float range"),
        ({"mqtt": {"heartbeat": 10**400}}, "mqtt.heartbeat", "huge integer"),
        ({"mqtt": {"username": HUGE}}, "mqtt.username", "huge integer"),
        ({"labels": {"site": [HUGE]}}, "labels.site", "list holding a huge integer"),
    ],
)
def test_agent_config_odd_values_are_config_errors(
    tables: dict[str, Any], key: str, problem: str
) -> None:
    with pytest.raises(AgentConfigError, match=problem) as err:
        parse_agent_config(agent_doc(**tables), Path("/etc/edgefleet/agent.toml"))
    assert err.value.key == key


@pytest.mark.parametrize(
    ("doc", "key", "problem"),
    [
        ({"hub": {"listen": "0.0.0.0:\u00b2"}}, "hub.listen", "must look like"),
        ({"git": {"url": "https://[::1/fleet"}}, "git.url", "is not a URL"),
        ({"stages": [{"name": "a", "gate": {"min_ready_ratio": 10**400}}]},
         "stages[0].gate.min_ready_ratio", "must be a finite number"),
        ({"hub": {"events_max": 10**400}}, "hub.events_max", "beyond float range"),
    ],
)  # fmt: skip
def test_hub_config_odd_values_are_config_errors(
    doc: dict[str, Any], key: str, problem: str
) -> None:
    with pytest.raises(HubConfigError, match=problem) as err:
        parse_hub_config(doc, Path("/etc/edgefleet/fleet.toml"))
    assert err.value.key == key


@pytest.mark.parametrize(
    ("text", "problem"),
    [("a = " + "1" * 5000, "invalid TOML"), ("a = " + "[" * 5000 + "]" * 5000, "too deeply")],
)
def test_toml_past_python_limits_is_a_config_error(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(HubConfigError, match=problem):
        load_hub_config(path)


def test_huge_integer_duration_is_a_duration_error() -> None:
    with pytest.raises(DurationError, match="huge integer"):
        parse_duration(HUGE)


def test_options_with_a_huge_integer_literal_are_a_source_error() -> None:
    with pytest.raises(SourceError, match="invalid TOML"):
        parse_options("common", b"[health]\ntimeout = " + b"9" * 5000)
    with pytest.raises(SourceError, match="huge integer"):
        parse_options("common", b"[units.'a.service']\nstate = 0x" + b"f" * 4000)


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        ("data: {k: \x1f}", "invalid YAML: unacceptable character"),
        ("data: {release: 2024-01-01}", "data.release is a YAML date"),
        ("data: {at: 2024-13-45}", "invalid YAML value: month must be in 1..12"),
        ("data: {on: x}", "key True under .data is not a string"),
        ("data: {r: .nan}", "data.r is nan, not a finite number"),
        ("data: {b: !!binary aGVsbG8=}", "data.b is a YAML bytes"),
        ("data: {n: 0x" + "f" * 4000 + "}", "data.n is an integer beyond 64 bits"),
        ("data: {n: " + "9" * 5000 + "}", "invalid YAML value: Exceeds the limit"),
    ],
)
def test_manifest_yaml_json_cannot_carry_is_a_plan_error(yaml_text: str, problem: str) -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\n" + yaml_text
    files = {"a.yaml": DesiredFile("a.yaml", text.encode(), 0o100644, "common")}
    with pytest.raises(PlanError, match=re.escape(problem)):
        manifests.parse(files)
