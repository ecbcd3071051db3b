"""Activation control as logic on real files: lock files, [activation] config, the repo's
[activation] options and the gate's verdicts (clock injected; no daemon here)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from agent.activation import ActivationGate
from agent.activationconf import MIB, parse_size
from agent.config import AgentConfig, load_config
from agent.desired import DesiredState, Options, merge_options, parse_options
from agent.errors import ConfigError, SourceError
from agent.inhibit import remove_lock, scan, write_lock
from common.windows import parse_schedule

NOW = 1_733_000_000.0  # a fixed instant for the gate's injected clock

BASE = """
node = "pi-01"
[git]
url = "file:///srv/fleet.git"
paths = ["common"]
[trust]
require_signed = false
"""


def config(tmp_path: Path, activation: str = "") -> AgentConfig:
    inhibit = tmp_path / "inhibit"
    persistent = tmp_path / "persistent"
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "agent.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n' + BASE
        + f'[activation]\ninhibit_dir = "{inhibit}"\npersistent_inhibit_dir = "{persistent}"\n'
        + activation
    )  # fmt: skip
    return load_config(path)


def drop(directory: Path, name: str, content: str | bytes, mtime: float = NOW) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    os.utime(path, (mtime, mtime))
    return path


# -- lock files ----------------------------------------------------------------------


def test_lock_files_expiry_cap_and_fail_safe(tmp_path: Path) -> None:
    d = tmp_path / "inhibit"
    drop(d, "till.json", json.dumps({"reason": "sale in progress", "expires": NOW + 60}))
    drop(d, "forever.json", json.dumps({"reason": "no expiry", "expires": None}))
    drop(d, "late.json", json.dumps({"reason": "too long", "expires": NOW + 10**9}))
    drop(d, "broken", b"{not json")
    drop(d, "bad-expiry.json", json.dumps({"reason": "x", "expires": "soon"}))
    drop(d, ".app-tmp-123", b"half written")  # an app's temp file before its rename
    locks = {lock.name: lock for lock in scan((d, tmp_path / "missing"), max_ttl=3600)}
    assert sorted(locks) == ["bad-expiry", "broken", "forever", "late", "till"]
    assert locks["till"].expires == NOW + 60 and locks["till"].reason == "sale in progress"
    assert locks["forever"].expires == NOW + 3600  # no expiry: max_ttl from the mtime
    assert locks["late"].expires == NOW + 3600  # capped
    assert locks["broken"].reason == "malformed lock file broken"
    assert locks["bad-expiry"].reason == "malformed lock file bad-expiry.json"
    assert locks["broken"].expires == NOW + 3600  # fail safe, but bounded too


def test_write_and_remove_lock(tmp_path: Path) -> None:
    runtime, persistent = tmp_path / "run", tmp_path / "lib"
    path = write_lock(persistent, "pump", "filling tank 3", NOW + 30)
    assert json.loads(path.read_text()) == {"reason": "filling tank 3", "expires": NOW + 30}
    assert [lock.name for lock in scan((runtime, persistent), 3600)] == ["pump"]
    assert remove_lock((runtime, persistent), "pump") == [path]
    assert remove_lock((runtime, persistent), "pump") == []
    assert scan((runtime, persistent), 3600) == []


def test_unreadable_inhibit_dir_is_a_lock(tmp_path: Path) -> None:
    not_a_dir = drop(tmp_path, "inhibit", "a file where the dir should be")
    (lock,) = scan((not_a_dir,), 3600)
    assert lock.reason.startswith("cannot read inhibit dir") and math.isinf(lock.expires)


# -- config --------------------------------------------------------------------------


def test_activation_config(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        'window = ["mon-fri 22:00-05:00", "sat 10:00-12:00"]\ntimezone = "Europe/Berlin"\n'
        'min_free = "500MB"\nmax_ttl = 7200\npin = true\nrespect_override = false\n',
    ).activation
    assert cfg.window == ("mon-fri 22:00-05:00", "sat 10:00-12:00")
    assert cfg.timezone == "Europe/Berlin" and cfg.pin and not cfg.respect_override
    assert (cfg.min_free, cfg.max_ttl) == (500 * MIB, 7200)
    default = config(tmp_path / "d").activation
    assert default.window == () and default.timezone is None and default.min_free == 64 * MIB


@pytest.mark.parametrize(
    ("text", "size"),
    [("500MB", 500 * MIB), ("64 MiB", 64 * MIB), ("1G", 1024**3), ("2048", 2048),
     ("0.5k", 512), ("lots", None), ("5 PB", None)],
)  # fmt: skip
def test_parse_size(text: str, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("lines", "key", "problem"),
    [
        ('window = "mon-fri 25:00-05:00"', "activation.window", "not a time of day"),
        ('window = "weekdays"', "activation.window", "must look like"),
        ('timezone = "Europe/Atlantis"', "activation.timezone", "unknown time zone"),
        ('min_free = "lots"', "activation.min_free", "size like"),
        ("min_free = -1", "activation.min_free", "at least 0"),
        ("max_ttl = 0", "activation.max_ttl", "must be between 1 and"),
        ("windw = '10:00-11:00'", "activation.windw", "unknown key"),
    ],
)
def test_bad_activation_config_names_the_key(
    tmp_path: Path, lines: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config(tmp_path, lines + "\n")
    assert info.value.key == key and problem in info.value.problem


# -- the fleet repo's [activation] -----------------------------------------------------


def test_repo_activation_options_merge_in_path_order() -> None:
    common = parse_options("common", b'[activation]\nwindow = "22:00-05:00"\n')
    site = parse_options("sites/berlin", b'[activation]\ntimezone = "Europe/Berlin"\n')
    node = parse_options("nodes/pi", b"[activation]\nwindow = ['sat 10:00-12:00']\n")
    merged = merge_options([common, site, node]).activation
    assert merged.window == ("sat 10:00-12:00",) and merged.timezone == "Europe/Berlin"
    assert merge_options([common, Options()]).activation.window == ("22:00-05:00",)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b'[activation]\nwindow = "9-5"\n', "activation.window: '9-5' must look like"),
        (b'[activation]\ntimezone = "Mars/Olympus"\n', "activation.timezone: unknown time zone"),
        (b"[activation]\npin = true\n", "activation.pin: unknown key"),
    ],
)
def test_bad_repo_activation_refuses_the_commit(text: bytes, problem: str) -> None:
    with pytest.raises(SourceError, match=problem.replace("(", r"\(")):
        parse_options("common", text)


# -- the gate ------------------------------------------------------------------------


def desired(window: tuple[str, ...] | None = None, tz: str | None = None) -> DesiredState:
    raw = b""
    if window is not None:
        raw += f"[activation]\nwindow = {list(window)!r}\n".replace("'", '"').encode()
        if tz is not None:
            raw += f'timezone = "{tz}"\n'.encode()
    return DesiredState("c" * 40, ("common",), {}, parse_options("common", raw))


class Gate:
    """An ActivationGate on a fixed clock, recording the events it emits."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.now = NOW
        self.gate = ActivationGate(cfg, lambda t, d: self.events.append((t, d)), lambda: self.now)


def test_lock_holds_then_expires_once_reported(tmp_path: Path) -> None:
    cfg = config(tmp_path, "min_free = 0\n")
    g = Gate(cfg)
    write_lock(cfg.activation.inhibit_dir, "till", "sale in progress", NOW + 30)
    hold = g.gate.hold(desired())
    assert hold is not None and (hold.state, hold.reason) == ("deferred", "Locked")
    assert hold.message == "locked: sale in progress (till)" and hold.until == NOW + 30
    assert g.gate.staged == "c" * 40
    g.now = NOW + 31
    assert g.gate.hold(desired()) is None and g.gate.staged is None
    assert g.gate.hold(desired()) is None
    assert [t for t, _ in g.events] == ["lock_expired"]  # once, not per look


def test_window_in_its_zone_and_who_wins(tmp_path: Path) -> None:
    # NOW is 2024-11-30 20:53:20 UTC = 21:53:20 in Berlin (CET)
    cfg = config(tmp_path, 'window = "22:00-05:00"\ntimezone = "Europe/Berlin"\nmin_free = 0\n')
    g = Gate(cfg)
    hold = g.gate.hold(desired())
    assert hold is not None and hold.reason == "OutsideWindow"
    assert hold.message == "outside window 22:00-05:00 Europe/Berlin"
    assert hold.until == parse_schedule("22:00-05:00", "Europe/Berlin").next_change(NOW)
    assert hold.until is not None and 0 < hold.until - NOW <= 400
    # The repo's window wins (its zone from agent.toml when it names none)...
    assert g.gate.hold(desired(("21:00-22:00",))) is None
    assert g.gate.hold(desired(("21:00-22:00",), "UTC")) is not None
    # ...unless agent.toml pins its own.
    pinned = Gate(config(tmp_path / "p", 'window = "22:00-05:00"\npin = true\nmin_free = 0\n'))
    assert pinned.gate.window() == (("22:00-05:00",), None)
    pinned.gate.hold(desired(("21:00-22:00",), "Europe/Berlin"))
    assert pinned.gate.window() == (("22:00-05:00",), None)


def test_override_and_refusal(tmp_path: Path) -> None:
    cfg = config(tmp_path, "min_free = 0\n")
    write_lock(cfg.activation.inhibit_dir, "till", "busy", NOW + 600)
    g = Gate(cfg)
    g.gate.request_override("hotfix INC-7")
    assert g.gate.hold(desired()) is None
    assert g.events == [("override", {"reason": "hotfix INC-7", "held_by": "locked: busy (till)"})]
    assert g.gate.hold(desired()) is not None  # used up
    g.gate.request_override("late")
    g.now += 61
    assert g.gate.hold(desired()) is not None  # unused for too long
    refusing = Gate(config(tmp_path / "r", "respect_override = false\nmin_free = 0\n"))
    refusing.gate.request_override("hotfix")
    assert refusing.events == [("override_refused", {"reason": "hotfix"})]


def test_disk_space_floor(tmp_path: Path) -> None:
    g = Gate(config(tmp_path, 'min_free = "1000000 TiB"\n'))
    hold = g.gate.hold(desired())
    assert hold is not None and (hold.state, hold.reason) == ("error", "DiskSpace")
    assert "([activation] min_free); nothing applied" in hold.message


def test_staged_commit_and_repo_window_survive_a_restart(tmp_path: Path) -> None:
    cfg = config(tmp_path, "min_free = 0\n")
    cfg.state_dir.mkdir()
    write_lock(cfg.activation.persistent_inhibit_dir, "drive", "vehicle moving", NOW + 600)
    first = Gate(cfg)
    assert first.gate.hold(desired(("21:00-22:00",), "Europe/Berlin")) is not None
    again = Gate(cfg).gate  # a new daemon on the same state dir
    assert again.staged == "c" * 40
    assert again.window() == (("21:00-22:00",), "Europe/Berlin")

    memory = cfg.state_dir / "activation.json"
    for junk in (b"{", b'{"staged": "x", "window": null, "timezone": null}', b"[]"):
        memory.write_bytes(junk)
        fresh = Gate(cfg).gate
        assert (fresh.staged, fresh.window()) == (None, ((), None))
