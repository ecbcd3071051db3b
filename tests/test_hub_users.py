"""Users and roles against a real hub process: who may promote, roll back and sync
where, what the audit log records, reads behind a token, stream tickets, and
``edgefleet-hub token create``."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hub.config import parse_config
from hub.errors import ConfigError
from hub.users import token_digest
from tests.test_rollout import daemon  # noqa: F401 (a fixture)
from tests.testbed.fleetrepo import FleetRepo
from tests.testbed.gitserver import GitDaemon
from tests.testbed.hubproc import REPO_ROOT, HubProc, Publisher, status_doc

ADMIN = "s3cret-token"
STAGES = """
[[stages]]
name = "canary"

[[stages]]
name = "beta"
promote_from = "canary"
gate = { min_nodes = 1, soak = 0 }
"""
USERS = f"""
[[users]]
name = "vera"
role = "viewer"
token_sha256 = "{token_digest("viewer-token")}"

[[users]]
name = "olga"
role = "operator"
stages = ["beta"]
token_file = "olga.token"

[[users]]
name = "carl"
role = "operator"
stages = ["canary"]
token_sha256 = "{token_digest("canary-token").upper()}"
"""


def beta_behind_canary(repo: FleetRepo) -> tuple[str, str]:
    """beta at c0, canary at c1 (its child): a candidate to promote into beta."""
    c0 = repo.commit({"common/files/etc/motd": "v0\n"}, branch="canary")
    repo.push("beta", c0)
    return c0, repo.commit({"common/files/etc/motd": "v1\n"}, branch="canary")


def users_hub(hub_factory: Callable[..., HubProc], **options: Any) -> HubProc:
    hub = hub_factory(start=False, stages=STAGES, extra=USERS, **options)
    hub.directory.mkdir(parents=True, exist_ok=True)
    (hub.directory / "olga.token").write_text("operator-token\n")
    hub.start()
    return hub


def post(hub: HubProc, path: str, token: str | None, body: dict[str, Any]) -> tuple[int, Any]:
    return hub.request("POST", path, token=token, body=json.dumps(body).encode())


def test_roles_decide_who_may_act_where_and_the_audit_names_the_user(
    hub_factory: Callable[..., HubProc],
    daemon: tuple[FleetRepo, GitDaemon],  # noqa: F811
    publisher: Publisher,
) -> None:
    repo, server = daemon
    c0, c1 = beta_behind_canary(repo)
    hub = users_hub(hub_factory, git_url=server.url())
    publisher.status(status_doc("pi-c", 1, branch="canary"))
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 1)
    hub.wait_for(lambda: hub.get("/api/v1/summary")["stages"]["canary"]["head"] == c1)
    promote = "/api/v1/stages/beta/promote"

    assert post(hub, promote, None, {"force": True})[0] == 401
    assert post(hub, promote, "no-such-token", {"force": True})[0] == 401
    status, body = post(hub, promote, "viewer-token", {"force": True})
    assert status == 403
    assert body["error"] == "user vera (role viewer) may not promote in stage beta"
    status, body = post(hub, promote, "canary-token", {"force": True})
    assert status == 403
    assert body["error"] == "user carl (role operator of canary) may not promote in stage beta"
    assert repo.head("beta") == c0

    status, body = post(hub, promote, "operator-token", {"force": True, "who": "alice"})
    assert (status, body["to"]) == (200, c1), body
    assert repo.head("beta") == c1
    entry = hub.get("/api/v1/history?stage=beta")["history"][0]
    assert (entry["action"], entry["who"], entry["on_behalf"]) == ("promote", "olga", "alice")

    status, body = post(hub, "/api/v1/stages/beta/rollback", ADMIN, {"reason": "bad"})
    assert status == 200, body
    entry = hub.get("/api/v1/history?stage=beta")["history"][0]
    assert (entry["action"], entry["who"], entry["on_behalf"]) == ("rollback", "admin", None)
    # the pause a rollback leaves names the user, too
    beta = next(s for s in hub.get("/api/v1/stages")["stages"] if s["name"] == "beta")
    assert beta["paused"]["who"] == "admin"
    status, body = post(hub, "/api/v1/stages/beta/resume", "canary-token", {})
    assert status == 403 and "may not resume in stage beta" in body["error"]
    assert post(hub, "/api/v1/stages/beta/resume", "operator-token", {})[0] == 200

    # sync: the node's stage decides
    status, body = post(hub, "/api/v1/nodes/pi-c/sync", "operator-token", {})
    assert status == 403 and body["error"].endswith("may not sync nodes in stage canary")
    assert post(hub, "/api/v1/nodes/pi-c/sync", "canary-token", {})[0] == 202
    assert post(hub, "/api/v1/nodes/pi-c/sync", "viewer-token", {})[0] == 403
    # an override is audited under the user, with the caller's note beside it
    body = {"override": "hotfix INC-42", "who": "bob"}
    assert post(hub, "/api/v1/nodes/pi-c/sync", "operator-token", body)[0] == 403
    assert post(hub, "/api/v1/nodes/pi-c/sync", "canary-token", body)[0] == 202
    entry = hub.get("/api/v1/history?stage=canary")["history"][0]
    assert (entry["action"], entry["who"], entry["on_behalf"]) == ("sync-override", "carl", "bob")

    def whoami(token: str) -> Any:
        status, body = hub.request("GET", "/api/v1/whoami", token=token)
        assert status == 200, body
        return body

    assert whoami("operator-token") == {
        "name": "olga", "role": "operator", "stages": ["beta"], "may_operate": ["beta"],
        "public_read": True,
    }  # fmt: skip
    assert whoami(ADMIN)["may_operate"] == ["canary", "beta"]
    assert whoami("viewer-token")["may_operate"] == []
    assert hub.request("GET", "/api/v1/whoami", token="wrong")[0] == 401

    # the self-declared name never becomes the identity, even in a header
    status, _ = hub.request(
        "POST", promote, token="operator-token",
        body=b'{"force": true}', headers={"X-Edgefleet-User": "root"},
    )  # fmt: skip
    assert status == 200, _
    entry = hub.get("/api/v1/history?stage=beta")["history"][0]
    assert (entry["who"], entry["on_behalf"]) == ("olga", "root")


def stream_first_line(hub: HubProc, query: str = "") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"{hub.url}/api/v1/stream{query}", timeout=10) as resp:
            return resp.status, resp.readline()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_reads_need_a_token_when_not_public(hub_factory: Callable[..., HubProc]) -> None:
    hub = users_hub(hub_factory, hub_extra="public_read = false")
    for path in ("/api/v1/summary", "/api/v1/nodes", "/api/v1/history", "/metrics"):
        assert hub.request("GET", path)[0] == 401, path
        assert hub.request("GET", path, token="nope")[0] == 401, path
        assert hub.request("GET", path, token="viewer-token")[0] == 200, path
    # the page (it asks for a token) and liveness stay open
    assert hub.request("GET", "/")[0] == 200
    assert hub.request("GET", "/static/app.js")[0] == 200
    assert hub.request("GET", "/api/v1/health")[0] == 200
    assert hub.request("GET", "/api/v1/whoami") == (200, {
        "name": None, "role": None, "stages": [], "may_operate": [], "public_read": False,
    })  # fmt: skip

    assert stream_first_line(hub)[0] == 401
    assert stream_first_line(hub, "?ticket=forged.0000")[0] == 401
    assert hub.request("POST", "/api/v1/stream-ticket")[0] == 401
    status, body = hub.request("POST", "/api/v1/stream-ticket", token="viewer-token")
    assert status == 200 and body["expires_in"] == 60
    ticket = body["ticket"]
    assert stream_first_line(hub, f"?ticket={ticket}") == (200, b"retry: 2000\n")
    # a ticket is not a bearer token
    assert hub.request("GET", "/api/v1/summary", token=ticket)[0] == 401


def test_public_reads_stay_open_by_default(hub_factory: Callable[..., HubProc]) -> None:
    hub = users_hub(hub_factory)
    assert hub.request("GET", "/api/v1/summary")[0] == 200
    assert stream_first_line(hub)[0] == 200


def test_token_create_round_trip(hub_factory: Callable[..., HubProc]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hub.cli", "token", "create", "dana"],
        capture_output=True, text=True, timeout=30, check=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    lines = out.stdout.splitlines()
    token = lines[1]
    snippet = "\n".join(lines[lines.index("fleet.toml:") + 1 :])
    assert token_digest(token) in snippet
    hub = hub_factory(stages=STAGES, extra=snippet, hub_extra="public_read = false")
    status, body = hub.request("GET", "/api/v1/whoami", token=token)
    assert (status, body["name"], body["role"]) == (200, "dana", "viewer")
    assert hub.request("GET", "/api/v1/summary", token=token)[0] == 200
    assert hub.request("GET", "/api/v1/summary", token=token[:-1])[0] == 401

    bad = subprocess.run(
        [sys.executable, "-m", "hub.cli", "token", "create", "no good"],
        capture_output=True, text=True, timeout=30, check=False,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert bad.returncode == 2 and "not a valid user name" in bad.stderr


@pytest.mark.parametrize(
    ("users", "key", "problem"),
    [
        ('name = "x"\nrole = "boss"\ntoken_sha256 = "' + "a" * 64 + '"', "role", "one of"),
        ('name = "x"\nrole = "operator"\ntoken_sha256 = "' + "a" * 64 + '"', "stages", "needs"),
        ('name = "x"\nstages = ["prod"]\ntoken_sha256 = "' + "a" * 64 + '"', "stages", "prod"),
        ('name = "x"', "token_file", "exactly one"),
        ('name = "x"\ntoken_sha256 = "abc"', "token_sha256", "64 hex"),
        ('name = "admin"\ntoken_sha256 = "' + "a" * 64 + '"', "name", "[hub] token_file"),
        ('name = "a b"\ntoken_sha256 = "' + "a" * 64 + '"', "name", "required"),
        ('name = "x"\ntoken_sha256 = "' + "a" * 64 + '"\nrule = "admin"', "rule", "unknown"),
    ],
)
def test_bad_users_are_config_errors(tmp_path: Path, users: str, key: str, problem: str) -> None:
    (tmp_path / "token").write_text("t\n")
    text = f'[hub]\ntoken_file = "token"\n{STAGES}\n[[users]]\n{users}\n'
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(text), tmp_path / "fleet.toml")
    assert f"users[0].{key}" in str(err.value) and problem in str(err.value)
