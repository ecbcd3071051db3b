"""Both CLIs through real processes: global options before or after the command, and
client commands of edgefleet-hub that never load the server stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testbed.mosquitto import free_port

AGENT_COMMANDS = [["run"], ["sync", "--once"], ["status"], ["verify"], ["keygen"]]
HUB_COMMANDS = [
    ["serve"],
    ["status"],
    ["nodes", "--stage", "canary"],
    ["drift"],
    ["events"],
    ["stages"],
    ["promote", "beta"],
    ["rollback", "beta"],
    ["resume", "beta"],
    ["history"],
    ["recipients", "--label", "site=berlin"],
    ["enroll", "root@edge", "--stage", "canary", "--path", "common",
     "--allowed-signers", "/dev/null"],
]  # fmt: skip
SERVER_STACK = ("aiohttp", "aiosqlite", "hub.store", "hub.web", "hub.ingest", "hub.mqtt")


def _cli(module: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _orders(command: list[str], options: list[str]) -> list[list[str]]:
    """The options before the command, and after it (and after its own arguments)."""
    return [[*options, *command], [*command, *options]]


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    """A config file both CLIs refuse, naming it (proof that this --config was used)."""
    path = tmp_path / "misspelt.toml"
    path.write_text("nodee = 'x'\n")
    return path


@pytest.mark.parametrize(
    ("command", "summary"),
    [("keygen", "age identity"), ("prepare-roots", "allowed roots"), ("verify", "signature")],
)
def test_agent_command_help_says_what_the_command_does(command: str, summary: str) -> None:
    done = _cli("agent.cli", [command, "--help"])
    assert done.returncode == 0, done.stderr
    description = done.stdout.split("\n\n")[1]  # after the usage block
    assert summary in description, done.stdout


@pytest.mark.parametrize("command", AGENT_COMMANDS, ids=lambda c: c[0])
def test_agent_takes_config_and_verbose_on_either_side(
    command: list[str], bad_config: Path
) -> None:
    for argv in _orders(command, ["-v", "--config", str(bad_config)]):
        proc = _cli("agent.cli", argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert f"config error: {bad_config}: " in proc.stderr, argv


@pytest.mark.parametrize("command", HUB_COMMANDS, ids=lambda c: c[0])
def test_hub_takes_config_and_verbose_on_either_side(command: list[str], bad_config: Path) -> None:
    for argv in _orders(command, ["-v", "--config", str(bad_config)]):
        proc = _cli("hub.cli", argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert f"configuration error: {bad_config}: " in proc.stderr, argv


def test_a_value_before_the_command_is_kept_when_none_comes_after(bad_config: Path) -> None:
    proc = _cli("agent.cli", ["--config", str(bad_config), "status", "-v"])
    assert f"config error: {bad_config}:" in proc.stderr
    proc = _cli("hub.cli", ["--config", str(bad_config), "history", "-v"])
    assert f"configuration error: {bad_config}:" in proc.stderr


PROBE = """
import json, sys
from hub.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""


def _modules_after(argv: list[str]) -> tuple[int, set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(proc.stdout.splitlines()[-1])
    return result["rc"], set(result["modules"])


@pytest.mark.parametrize(
    "command", [["status"], ["nodes"], ["promote", "beta"], ["history"]], ids=lambda c: c[0]
)
def test_client_commands_do_not_load_the_server_stack(command: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the command fails with 1
    rc, modules = _modules_after([*command, "--url", url, "--timeout", "2"])
    assert rc == 1
    assert not {m for m in modules if m.split(".")[0] in SERVER_STACK or m in SERVER_STACK}
    assert not {m for m in modules if m.split(".")[0] in ("asyncssh", "paho", "agent")}


def test_serve_does_load_it(bad_config: Path) -> None:
    """The probe above sees the server stack when it is there."""
    rc, modules = _modules_after(["serve", "--config", str(bad_config)])
    assert rc == 2
    assert {"aiosqlite", "hub.store", "hub.web"} <= modules
