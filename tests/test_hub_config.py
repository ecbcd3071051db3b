"""fleet.toml validation (pure logic) and the CLI's exit code 2 on a bad file."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hub.config import load_config, parse_config
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
    assert cfg.mqtt.shared and cfg.mqtt.protocol == "auto"
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
        ("[hub]\nheartbeat = 'fast'\n", "hub.heartbeat", "must be a number"),
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
         "stages[0].gate.soak", "at least 0"),
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
    assert f"{conf}: hub.heartbeat: must be at least" in done.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "hub.cli", "serve", "--config", str(tmp_path / "nope.toml")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=30, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "does not exist" in missing.stderr
