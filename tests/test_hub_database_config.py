"""``[hub] database``: a SQLite path or a PostgreSQL URL, and what follows from it."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from hub.config import HubConfig, parse_config
from tests.testbed.hubproc import REPO_ROOT


def parse(text: str, path: Path = Path("/etc/edgefleet/fleet.toml")) -> HubConfig:
    return parse_config(tomllib.loads(text), path)


def test_sqlite_is_one_hub_with_a_plain_subscription() -> None:
    cfg = parse('[hub]\ndatabase = "/srv/hub/hub.db"\n')
    assert (cfg.hub.database, cfg.hub.database_url) == (Path("/srv/hub/hub.db"), None)
    assert cfg.hub.state_dir == Path("/srv/hub") and not cfg.mqtt.shared


def test_postgresql_replicas_share_the_subscription(tmp_path: Path) -> None:
    url = "postgresql://hub:pw@db.example:5432/edgefleet?sslmode=verify-full"
    (tmp_path / "ca.pem").write_text("x")
    cfg = parse(f'[hub]\ndatabase = "{url}"\ndatabase_ca_file = "ca.pem"\n', tmp_path / "f.toml")
    assert cfg.hub.database_url == url and cfg.mqtt.shared
    assert cfg.hub.database_ca_file == tmp_path / "ca.pem"
    assert cfg.hub.state_dir == Path("/var/lib/edgefleet-hub")


def test_an_explicit_shared_setting_wins() -> None:
    pg = parse('[hub]\ndatabase = "postgres://db/x"\n[mqtt]\nshared = false\n')
    lite = parse("[mqtt]\nshared = true\n")
    assert (pg.mqtt.shared, lite.mqtt.shared) == (False, True)


def test_state_dir_can_be_set() -> None:
    cfg = parse('[hub]\ndatabase = "postgresql://db/x"\nstate_dir = "/srv/hub"\n')
    assert cfg.hub.state_dir == Path("/srv/hub")


def test_serve_and_migrate_without_the_postgres_extra_say_what_is_missing(tmp_path: Path) -> None:
    """A .deb without the extra, pointed at PostgreSQL: one line, no traceback."""
    url = "postgresql://hub:hunter2@127.0.0.1:1/hub"
    (tmp_path / "fleet.toml").write_text(
        f'[hub]\ndatabase = "{url}"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
        '[[stages]]\nname = "stable"\n'
    )
    (tmp_path / "hub.db").touch()
    no_asyncpg = (
        "import sys; sys.modules['asyncpg'] = None\nfrom hub.cli import main\nsys.exit(main())"
    )
    expected = (
        "edgefleet-hub: [hub] database postgresql://hub:***@127.0.0.1:1/hub is PostgreSQL, "
        "but its driver is not installed: install the postgres extra "
        "(pip install 'asyncpg>=0.29' in edgefleet's venv)"
    )
    for args in (["serve", "--config", "fleet.toml"], ["migrate", "--from", "hub.db", "--to", url]):
        done = subprocess.run(
            [sys.executable, "-c", no_asyncpg, *args], cwd=tmp_path, env={**os.environ,
             "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (done.returncode, done.stderr.strip()) == (1, expected), args
