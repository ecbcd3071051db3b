"""Agent config: defaults, validation messages, and the CLI's exit code 2."""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.config import load_config, parse_config
from agent.errors import ConfigError
from common import wire

MINIMAL = """
node = "pi-01"
[git]
url = "file:///srv/fleet.git"
paths = ["common", "nodes/pi-01"]
[trust]
require_signed = false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_minimal_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.node == "pi-01"
    assert cfg.git.branch == "stable"
    assert cfg.git.paths == ("common", "nodes/pi-01")
    assert cfg.trust.non_fast_forward == "known-good"
    assert cfg.drift.mode == "correct"
    assert cfg.targets.files.allowed_roots == ()
    assert not cfg.targets.systemd.enabled
    assert cfg.mqtt.url is None


def test_full_config(tmp_path: Path) -> None:
    signers = tmp_path / "allowed_signers"
    signers.write_text("")
    pw = tmp_path / "pw"
    pw.write_text("x")
    cfg = load_config(
        write(
            tmp_path,
            f"""
node = "shop-7"
state_dir = "{tmp_path}/state"
[labels]
site = "berlin"
[git]
url = "ssh://git@example.org/fleet.git"
branch = "canary"
paths = ["common"]
interval = 15
[trust]
allowed_signers = "{signers}"
non_fast_forward = "never"
[mqtt]
url = "mqtts://broker:8883"
username = "shop-7"
password_file = "{pw}"
protocol = "3.1.1"
[targets.files]
allowed_roots = ["/etc/app", "/srv"]
[targets.systemd]
enabled = true
systemctl = ["nsenter", "-t", "1", "-a", "systemctl"]
[drift]
mode = "report"
interval = 60
[health]
timeout = 30
settle = 2
""",
        )
    )
    assert cfg.labels == {"site": "berlin"}
    assert cfg.mqtt.tls and cfg.mqtt.port == 8883 and cfg.mqtt.host == "broker"
    assert cfg.targets.systemd.systemctl[0] == "nsenter"
    assert cfg.targets.files.allowed_roots == (Path("/etc/app"), Path("/srv"))
    assert cfg.git.interval == 15.0 and cfg.health.settle == 2.0


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("node = 'x'\n", "git.", "is required"),
        (MINIMAL + "bogus = 1\n", "bogus", "unknown key"),
        (MINIMAL.replace("paths = [", "paths = ['../etc', "), "git.paths", "relative"),
        (MINIMAL.replace("file:///", "ftp://"), "git.url", "unsupported scheme"),
        (MINIMAL + "[drift]\nmode = 'fix'\n", "drift.mode", "must be one of"),
        (MINIMAL + "[drift]\ninterval = true\n", "drift.interval", "boolean"),
        (MINIMAL + "[health]\ntimeout = -1\n", "health.timeout", "between 0 and"),
        (MINIMAL + "[health]\ntimeout = nan\n", "health.timeout", "finite"),
        (MINIMAL + "[health]\nsettle = '5 sec'\n", "health.settle", "is not a duration"),
        (MINIMAL + "[drift]\ninterval = inf\n", "drift.interval", "finite"),
        (MINIMAL.replace("paths =", "timeout = '2h'\npaths ="), "git.timeout", "between 1 and"),
        (MINIMAL + "[mqtt]\nheartbeat = -inf\n", "mqtt.heartbeat", "finite"),
        (MINIMAL + "[mqtt]\nkeepalive = 100000\n", "mqtt.keepalive", "between 5 and 65535"),
        (MINIMAL + "[mqtt]\noutbox_max = 9223372036854775807\n", "mqtt.outbox_max", "between"),
        (
            MINIMAL + "[targets.systemd]\nsystemctl = []\n",
            "targets.systemd.systemctl",
            "must name a command",
        ),
        (MINIMAL.replace("require_signed = false", ""), "trust.allowed_signers", "required"),
        (MINIMAL + "[mqtt]\nurl = 'http://x'\n", "mqtt.url", "mqtt://"),
        (MINIMAL + "[targets.files]\nallowed_roots = ['/']\n", "targets.files.allowed_roots", "/"),
        (MINIMAL + "[targets.files]\nallowed_roots = ['etc']\n", "allowed_roots", "absolute"),
        (MINIMAL + "[git2]\n", "git2", "unknown key"),
        (MINIMAL.replace('"pi-01"', '"a/b"', 1), "node", "is not 1 to 128 ASCII"),
        ("node = [\n", "(syntax)", "invalid TOML"),
    ],
)
def test_bad_config_names_key_and_problem(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert key in info.value.key or key in message
    assert problem in message


def test_durations_accept_seconds_and_unit_text(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            MINIMAL.replace("paths =", "interval = '5m'\ntimeout = 45\npaths =")
            + "[mqtt]\nheartbeat = '30s'\n[drift]\ninterval = '1h30m'\n"
            "[health]\ntimeout = '2m'\nsettle = '500ms'\n",
        )
    )
    assert (cfg.git.interval, cfg.git.timeout, cfg.mqtt.heartbeat) == (300, 45, 30)
    assert (cfg.drift.interval, cfg.health.timeout, cfg.health.settle) == (5400, 120, 0.5)


def test_allowed_root_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "to-root").symlink_to("/")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for root in ("to-root", "link", "link/missing-below"):
        text = MINIMAL + f"[targets.files]\nallowed_roots = ['{tmp_path / root}']\n"
        with pytest.raises(ConfigError, match="leads through a symlink") as info:
            load_config(write(tmp_path, text))
        assert info.value.key == "targets.files.allowed_roots"
    text = MINIMAL + f"[targets.files]\nallowed_roots = ['{tmp_path / 'real/missing'}']\n"
    assert load_config(write(tmp_path, text)).targets.files.allowed_roots == (
        tmp_path / "real/missing",
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_cli_exit_code_2_and_nothing_applied(tmp_path: Path) -> None:
    target = tmp_path / "root"
    path = write(tmp_path, MINIMAL + f"[targets.files]\nallowed_roots = ['{target}']\nx = 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--config", str(path), "sync", "--once"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "targets.files.x: unknown key" in done.stderr
    assert done.stderr.count("\n") == 1, "one clear error line"
    assert not target.exists()


def test_cli_names_a_misspelt_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("paths =", "pahts ="))
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--config", str(path), "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "git.paths: is required" in done.stderr
    assert "(is 'git.pahts' a misspelling?)" in done.stderr


def test_cli_config_that_is_a_directory_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--config", str(tmp_path), "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert f"{tmp_path}: (file): cannot be read: Is a directory" in done.stderr


@pytest.mark.parametrize("name", ["shop berlin", "büro-1", "n" * 129, "-lead", "a+b", "x\n"])
def test_node_name_the_hub_would_drop_exits_2_naming_file_and_key(
    tmp_path: Path, name: str
) -> None:
    """The hub drops every message of such a node as bad_topic: refuse it at start."""
    path = write(tmp_path, MINIMAL.replace('"pi-01"', repr(name), 1))
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--config", str(path), "sync", "--once"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"{path}: node: " in done.stderr
    assert "is not 1 to 128 ASCII letters" in done.stderr


def test_node_name_rule_is_the_hubs(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL.replace('"pi-01"', '"shop_7.berlin:a-1"', 1)))
    assert wire.valid_node_name(cfg.node)
    assert wire.valid_node_name("n" * 128) and not wire.valid_node_name("n" * 129)


def test_invalid_hostname_default_is_refused_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "Büro PC")
    data = tomllib.loads(MINIMAL.replace('node = "pi-01"\n', ""))
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path / "agent.toml")
    assert info.value.key == "node"
    assert "the hostname" in str(info.value)
