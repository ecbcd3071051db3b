"""fleet.toml validation (pure logic) and the CLI's exit code 2 on a bad file."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hub.config import DEFAULT_CONFIG_PATH, load_config, parse_config
from hub.errors import ConfigError
from tests.testbed.hubproc import REPO_ROOT


def parse(text: str, path: Path = Path("/etc/edgefleet/fleet.toml")) -> Any:
    return parse_config(tomllib.loads(text), path)


def test_example_fleet_toml_is_valid() -> None:
    cfg = load_config(REPO_ROOT / "fleet.toml")
    assert [s.name for s in cfg.stages] == ["canary", "beta", "stable"]
    assert [s.promote_from for s in cfg.stages] == [None, "canary", "beta"]
    assert cfg.stages[1].window is not None
    assert cfg.stages[1].window.windows[0].days == frozenset(range(5))
    assert cfg.stages[2].gate.min_ready_ratio == 0.95
    assert cfg.stage_for_branch("beta") is cfg.stages[1]


def test_defaults() -> None:
    cfg = parse("[hub]\nheartbeat = 10\n")
    assert cfg.hub.stale_after == 30.0  # 3 x heartbeat
    assert cfg.hub.listen == ("127.0.0.1", 8080)
    assert not cfg.mqtt.shared and cfg.mqtt.protocol == "auto"  # one SQLite hub: plain
    assert cfg.git.url is None and cfg.stages == ()


def test_relative_paths_resolve_against_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t\n")
    cfg = parse('[hub]\ndatabase = "db/hub.db"\ntoken_file = "token"\n', tmp_path / "fleet.toml")
    assert cfg.hub.database == tmp_path / "db" / "hub.db"
    assert cfg.hub.token_file == tmp_path / "token"


STAGE = '[[stages]]\nname = "{name}"\nbranch = "{branch}"\n{extra}\n'
TWO_A = STAGE.format(name="a", branch="a", extra="") + STAGE.format(name="a", branch="b", extra="")
TWO_X = STAGE.format(name="a", branch="x", extra="") + STAGE.format(name="b", branch="x", extra="")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[hub]\nlisten = 'localhost'\n", "hub.listen", "must look like"),
        ("[hub]\nheartbeat = 'fast'\n", "hub.heartbeat", "is not a duration"),
        ("[hub]\nheartbeat = nan\n", "hub.heartbeat", "finite"),
        ("[hub]\nstale_after = inf\n", "hub.stale_after", "finite"),
        ("[hub]\nevents_max_age = '20y'\n", "hub.events_max_age", "is not a duration"),
        ("[hub]\ndatabase = 'mysql://hub@db/edgefleet'\n", "hub.database", "'mysql' URLs"),
        ("[hub]\nevents_max = 9223372036854775807\n", "hub.events_max", "between 100 and"),
        ("[mqtt]\nkeepalive = 100000\n", "mqtt.keepalive", "between 5 and 65535"),
        ("[mqtt]\nsession_expiry = 99999999999\n", "mqtt.session_expiry", "4294967295"),
        ("[git]\ninterval = -inf\n", "git.interval", "finite"),
        (STAGE.format(name="a", branch="a", extra="gate = { min_ready_ratio = nan }"),
         "stages[0].gate.min_ready_ratio", "finite"),
        (STAGE.format(name="a", branch="a", extra="gate = { soak = nan }"),
         "stages[0].gate.soak", "finite"),
        (STAGE.format(name="a", branch="a", extra="gate = { soak = '10 min' }"),
         "stages[0].gate.soak", "is not a duration"),
        (STAGE.format(name="a", branch="a", extra="gate = { min_nodes = 0 }"),
         "stages[0].gate.min_nodes", "between 1 and"),
        ("[hub]\nheartbeat = true\n", "hub.heartbeat", "boolean"),
        ("[hub]\nheartbeat = 10\nstale_after = 5\n", "hub.stale_after", "at least heartbeat"),
        ("[hub]\ntoken_file = '/nonexistent/token'\n", "hub.token_file", "does not exist"),
        ("[hub]\nlistn = '1.2.3.4:5'\n", "hub.listn", "unknown key"),
        ("[mqtt]\nurl = 'http://x'\n", "mqtt.url", "mqtt://"),
        ("[mqtt]\nclient_id = 'a/b'\n", "mqtt.client_id", "may not contain"),
        ("[git]\nurl = 'ftp://x/y'\n", "git.url", "unsupported scheme"),
        ("[typo]\n", "typo", "unknown key"),
        ("stages = 3\n", "stages", "array of tables"),
        (STAGE.format(name="Bad Name", branch="b", extra=""), "stages[0].name", "lowercase"),
        (STAGE.format(name="a", branch="refs/heads/a", extra=""), "stages[0].branch", "plain"),
        (STAGE.format(name="a", branch="a", extra="auto = true"), "stages[0].auto", "promote_from"),
        (STAGE.format(name="a", branch="a", extra="promote_from = 'z'"),
         "stages[0].promote_from", "no stage named"),
        (STAGE.format(name="a", branch="a", extra="promote_from = 'a'"),
         "stages[0].promote_from", "itself"),
        (TWO_A, "stages[0].name", "defined twice"),
        (TWO_X, "stages[0].branch", "two stages"),
        (STAGE.format(name="a", branch="a", extra="promote_from = 'b'")
         + STAGE.format(name="b", branch="b", extra="promote_from = 'a'"),
         "stages[0].promote_from", "cycle"),
        (STAGE.format(name="a", branch="a", extra="gate = { min_ready_ratio = 1.5 }"),
         "stages[0].gate.min_ready_ratio", "between 0 and 1"),
        (STAGE.format(name="a", branch="a", extra="gate = { soak = -1 }"),
         "stages[0].gate.soak", "between 0 and"),
        (STAGE.format(name="a", branch="a", extra="gate = { min_nodes = 1.5 }"),
         "stages[0].gate.min_nodes", "integer"),
        (STAGE.format(name="a", branch="a", extra="gate = { soke = 1 }"),
         "stages[0].gate.soke", "unknown key"),
        (STAGE.format(name="a", branch="a", extra="window = '25:00-26:00'"),
         "stages[0].window", "not a time of day"),
        (STAGE.format(name="a", branch="a", extra="window = 'xyz 09:00-10:00'"),
         "stages[0].window", "unknown day"),
        (STAGE.format(name="a", branch="a", extra="window = '9-10'"),
         "stages[0].window", "must look like"),
        (STAGE.format(name="a", branch="a", extra="window = '09:00-10:00'\ntimezone = 'Mars/Base'"),
         "stages[0].timezone", "unknown time zone"),
    ],
)  # fmt: skip
def test_bad_values_name_the_key(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.key == key
    assert problem in info.value.problem


def test_durations_accept_seconds_and_unit_text() -> None:
    cfg = parse(
        "[hub]\nheartbeat = '30s'\nstale_after = '1m30s'\nevents_max_age = '2d'\n"
        "[mqtt]\nsession_expiry = '1h'\n[git]\ninterval = 2.5\n"
        + STAGE.format(name="a", branch="a", extra="gate = { soak = '10m' }")
    )
    assert (cfg.hub.heartbeat, cfg.hub.stale_after, cfg.hub.events_max_age) == (30, 90, 172800)
    assert cfg.mqtt.session_expiry == 3600 and isinstance(cfg.mqtt.session_expiry, int)
    assert cfg.git.interval == 2.5 and cfg.stages[0].gate.soak == 600


def test_window_wraps_the_week() -> None:
    cfg = parse(STAGE.format(name="a", branch="a", extra="window = 'Sat-Mon 22:00-23:30'"))
    assert cfg.stages[0].window is not None
    window = cfg.stages[0].window.windows[0]
    assert (window.days, window.start, window.end) == (frozenset({5, 6, 0}), 1320, 1410)


def test_serve_exits_2_on_bad_config(tmp_path: Path) -> None:
    conf = tmp_path / "fleet.toml"
    conf.write_text("[hub]\nheartbeat = -1\n")
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "serve", "--config", str(conf)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{conf}: hub.heartbeat: must be between 0.1 and" in done.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "hub.cli", "serve", "--config", str(tmp_path / "nope.toml")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=30, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "http://127.0.0.1:notaport"], "is not a URL"),
        (["--url", "http://[::1"], "is not a URL"),
        (["--url", "http://"], "must look like http://127.0.0.1:8080"),
        (["--url", "http://a b/"], "must look like http://127.0.0.1:8080"),
        (["--url", "ftp://hub"], "must start with http://"),
        (["--url", "http://127.0.0.1:8080", "--timeout", "nan"], "--timeout must be between"),
        (["--config", "."], ": (file): cannot be read: Is a directory"),
    ],
)
def test_client_commands_refuse_bad_input_without_a_traceback(
    argv: list[str], message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "status", *argv],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode in (1, 2)
    assert "Traceback" not in done.stderr
    assert message in done.stderr


@pytest.mark.skipif(DEFAULT_CONFIG_PATH.exists(), reason="this host has a fleet.toml")
def test_client_command_without_config_or_url_says_how_to_reach_a_hub() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "status"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{DEFAULT_CONFIG_PATH}: (file): does not exist: give --config" in done.stderr
    assert "--url URL" in done.stderr


def test_token_file_that_is_not_text_is_a_clear_error(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_bytes(b"\xff\xfe")
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "status", "--url", "http://127.0.0.1:1",
         "--token-file", str(token)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"cannot read token file {token}: not UTF-8 text" in done.stderr
