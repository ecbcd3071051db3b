"""The agent.toml enroll writes: rendered from a typed value, read back by agent.config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import parse_config
from hub.enroll import EnrollError
from hub.enroll.agentconf import AgentToml, checked_text, read_back, render

BASE = AgentToml(
    node="edge-1",
    git_url="ssh://git@git.example:2222/fleet.git",
    branch="canary",
    paths=("common",),
)
CASES = {
    "minimal": BASE,
    "labels with quotes, backslashes, unicode, controls": replace(
        BASE,
        labels={
            "site": 'Zürich "HQ"',
            "rack": "a\\b\tc\nd\x7f",
            "emoji": "🚀 ok",
            "key with space.and dot": "x",
        },
    ),
    "several paths": replace(BASE, paths=("common", "sites/berlin", "nodes/edge-1")),
    "mqtt without credentials": replace(BASE, mqtt_url="mqtt://10.0.0.1:1883"),
    "mqtt with password and tls": replace(
        BASE, mqtt_url="mqtts://broker.example:8883", mqtt_password=True, mqtt_ca=True
    ),
    "allowed roots and k3s": replace(BASE, allowed_roots=("/srv/app", "/etc/app"), k3s=True),
    "k3s off, roots with spaces": replace(BASE, allowed_roots=("/srv/my app",), k3s=False),
}


def _stage(conf: AgentToml, etc: Path) -> AgentToml:
    """``conf`` with its files under ``etc``, where they exist (the agent checks that)."""
    staged = replace(conf, etc=etc)
    for path in staged.named_files():
        path.touch()
    return staged


@pytest.mark.parametrize("name", sorted(CASES))
def test_written_text_reads_back_as_asked(name: str, tmp_path: Path) -> None:
    conf = _stage(CASES[name], tmp_path)
    cfg = read_back(render(conf), tmp_path / "agent.toml")
    assert cfg.node == conf.node
    assert dict(cfg.labels) == dict(conf.labels)
    assert (cfg.git.url, cfg.git.branch, cfg.git.paths) == (conf.git_url, conf.branch, conf.paths)
    assert cfg.trust.allowed_signers == tmp_path / "allowed_signers"
    assert cfg.mqtt.url == conf.mqtt_url
    if conf.mqtt_password:
        assert cfg.mqtt.username == conf.node
        assert cfg.mqtt.password_file == tmp_path / "mqtt-password"
    else:
        assert cfg.mqtt.username is None and cfg.mqtt.password_file is None
    assert cfg.mqtt.ca_file == (tmp_path / "mqtt-ca.pem" if conf.mqtt_ca else None)
    assert cfg.targets.files.allowed_roots == tuple(Path(r) for r in conf.allowed_roots)
    assert cfg.targets.k3s.enabled is conf.k3s


@pytest.mark.parametrize("name", sorted(CASES))
def test_checked_text_is_the_text_for_the_node(name: str) -> None:
    # The node's paths (/etc/edgefleet/...) need not exist here: the check stages them.
    assert checked_text(CASES[name]) == render(CASES[name])


def test_layout_unchanged_for_nodes_enrolled_before() -> None:
    """Same bytes as the earlier hand-written renderer: re-enrolling restarts nothing."""
    conf = replace(
        BASE, mqtt_url="mqtt://10.0.0.1:1883", mqtt_password=True, allowed_roots=("/srv/a",)
    )
    assert render(conf) == (
        "# Written by `edgefleet-hub enroll`; the next enrollment overwrites local edits.\n"
        'node = "edge-1"\n'
        "\n"
        "[git]\n"
        'url = "ssh://git@git.example:2222/fleet.git"\n'
        'branch = "canary"\n'
        'paths = ["common"]\n'
        "\n"
        "[trust]\n"
        'allowed_signers = "/etc/edgefleet/allowed_signers"\n'
        "\n"
        "[mqtt]\n"
        'url = "mqtt://10.0.0.1:1883"\n'
        'username = "edge-1"\n'
        'password_file = "/etc/edgefleet/mqtt-password"\n'
        "\n"
        "[targets.files]\n"
        'allowed_roots = ["/srv/a"]\n'
    )


@pytest.mark.parametrize(
    ("conf", "problem"),
    [
        (replace(BASE, labels={"site": ""}), r"labels\.site: must not be empty"),
        (replace(BASE, paths=("../etc",)), r"git\.paths: path '\.\./etc' must be relative"),
        (replace(BASE, git_url="ftp://x/fleet"), r"git\.url: unsupported scheme 'ftp'"),
        (replace(BASE, mqtt_url="http://broker"), r"mqtt\.url: .* must look like mqtt://"),
        (replace(BASE, branch="refs/heads/x"), r"git\.branch: .* is not a plain branch name"),
        (replace(BASE, allowed_roots=("/",)), r"targets\.files\.allowed_roots: '/' is not"),
    ],
)
def test_a_value_the_agent_refuses_is_an_enroll_error(conf: AgentToml, problem: str) -> None:
    with pytest.raises(EnrollError, match=r"agent would refuse .*/etc/edgefleet/agent\.toml: "):
        checked_text(conf)
    with pytest.raises(EnrollError, match=problem):
        checked_text(conf)


def test_text_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(EnrollError, match="not valid UTF-8"):
        checked_text(replace(BASE, labels={"site": "caf\udce9"}))


def test_a_trailing_slash_in_a_path_would_not_read_back(tmp_path: Path) -> None:
    # The agent normalizes "common/" to "common": the check notices any such difference.
    with pytest.raises(EnrollError, match="does not read back as written: git"):
        checked_text(replace(BASE, paths=("common/",)))
    parsed = parse_config({"node": "n", "git": {"url": "file:///r", "paths": ["common/"]},
                           "trust": {"require_signed": False}}, tmp_path / "a.toml")  # fmt: skip
    assert parsed.git.paths == ("common",)
