"""Values, templates and age secrets through the real agent CLI, a signed fleet repo and the
real ``age`` tool: what the operator encrypts the node decrypts, and the plaintext shows up
nowhere but in the placed file (status, events, logs, dry-run output, state dir)."""

from __future__ import annotations

import asyncio
import json
import platform
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from common import wire
from tests.testbed.agentcfg import AgentSetup, write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import Watcher

NODE = "node-tpl"
PASSWORD = "s3cr3t-Pa55word-zq"
TOKEN = "tok-9f8e7d6c5b4a-zq"
REQUIRES = '[requires]\nagent = ">= 0.2"\n'


def age_encrypt(plaintext: str, *recipients: str, armor: bool = False) -> bytes:
    args = ["age", *(["-a"] if armor else []), *(a for r in recipients for a in ("-r", r))]
    return subprocess.run(args, input=plaintext.encode(), capture_output=True, check=True).stdout


def keygen(setup: AgentSetup) -> str:
    done = setup.cli("keygen")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def files(setup: AgentSetup, path: str = "common") -> str:
    return f"{path}/files{setup.root}"


@pytest.fixture
def setup(tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey) -> AgentSetup:
    return write_agent_config(
        tmp_path / "agent",
        fleet_repo.url,
        node=NODE,
        paths=("common", f"nodes/{NODE}"),
        allowed_signers=signing_key.allowed_signers,
        extra=f'[secrets]\nidentity = "{tmp_path}/agent/age.key"\n',
    )


def test_keygen_creates_identity_once_and_age_cli_accepts_it(
    setup: AgentSetup, tmp_path: Path
) -> None:
    identity = tmp_path / "agent/age.key"
    first = keygen(setup)
    assert first.startswith("age1")
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    assert keygen(setup) == first, "keygen must not replace an existing identity"
    derived = subprocess.run(
        ["age-keygen", "-y", str(identity)], capture_output=True, text=True, check=True
    )
    assert derived.stdout.strip() == first


async def test_templates_and_age_secrets_applied_and_never_leaked(
    tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey, mosquitto: Mosquitto
) -> None:
    setup = write_agent_config(
        tmp_path / "agent",
        fleet_repo.url,
        node=NODE,
        paths=("common", f"nodes/{NODE}"),
        allowed_signers=signing_key.allowed_signers,
        mqtt_url=mosquitto.url,
        extra=f'[secrets]\nidentity = "{tmp_path}/agent/age.key"\n',
    )
    recipient = keygen(setup)
    other = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True)
    other_recipient = other.stderr.split("Public key: ")[1].strip()
    template = (
        "node={{ node }} port={{ app.port }} name={{ app.name }} arch={{ facts.arch }}\n"
        "password={{ secrets.db.password }}\n"
    )
    fleet_repo.commit(
        {
            "common/edgefleet.toml": REQUIRES,
            "common/values.toml": '[app]\nport = 8080\nname = "common"\n',
            f"nodes/{NODE}/values.toml": "[app]\nport = 9090\n",
            f"nodes/{NODE}/secrets.toml.age": age_encrypt(
                f'[db]\npassword = "{PASSWORD}"\n', recipient, other_recipient, armor=True
            ),
            f"{files(setup)}/app.conf.j2": template,
            f"{files(setup)}/plain.conf.j2": "branch={{ branch }}\n",
            f"{files(setup, f'nodes/{NODE}')}/token.age": age_encrypt(TOKEN, recipient),
        },
        sign=signing_key,
    )
    watcher = Watcher(mosquitto.port, [f"{wire.PREFIX}/node/{NODE}/#"])
    await watcher.ready()
    try:
        dry = await asyncio.to_thread(setup.cli, "sync", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert f"created    files:{setup.root}/token" in dry.stdout

        done = await asyncio.to_thread(setup.cli, "sync", "--once")
        assert done.returncode == 0, done.stdout + done.stderr
        app = setup.root / "app.conf"
        assert app.read_text() == (
            f"node={NODE} port=9090 name=common arch={platform.machine()}\npassword={PASSWORD}\n"
        )
        assert (setup.root / "token").read_text() == TOKEN
        assert (setup.root / "plain.conf").read_text() == "branch=stable\n"
        assert stat.S_IMODE((setup.root / "token").stat().st_mode) == 0o600
        assert stat.S_IMODE(app.stat().st_mode) == 0o600, "rendered from a secret"
        assert stat.S_IMODE((setup.root / "plain.conf").stat().st_mode) == 0o644
        assert not list(setup.root.glob("*.j2")) and not list(setup.root.glob("*.age"))

        inventory = json.loads(setup.cli("status", "--json").stdout)["inventory"]
        digests = {Path(i["subject"]).name: i["digest"] for i in inventory}
        assert digests["token"].startswith("hmac-sha256:")
        assert digests["app.conf"].startswith("hmac-sha256:")
        assert digests["plain.conf"].startswith("sha256:")

        (setup.root / "token").write_text("tampered")
        drift = await asyncio.to_thread(setup.cli, "sync", "--once")
        assert drift.returncode == 0, drift.stdout + drift.stderr
        assert (setup.root / "token").read_text() == TOKEN, "drift correction restores it"

        published = []
        while True:
            msg = await watcher.next()
            published.append(msg.payload.decode())
            doc = json.loads(msg.payload)
            if msg.topic.endswith("/events") and doc["type"] == "drift_corrected":
                break
        item = doc["details"]["drift"][0]
        assert (item["subject"], item["kind"]) == (f"{setup.root}/token", "modified")
    finally:
        watcher.close()
    retained = Watcher(mosquitto.port, [wire.status_topic(NODE)])
    try:
        status_msg = await retained.next()
    finally:
        retained.close()
    status = json.loads(status_msg.payload)
    assert status["recipient"] == recipient and status["state"] == "synced"

    seen = [dry.stdout, dry.stderr, done.stdout, done.stderr, drift.stdout, drift.stderr]
    seen += [status_msg.payload.decode(), *published]
    seen += [p.read_bytes().decode("utf-8", "replace") for p in _files(setup.state_dir)]
    for text in seen:
        assert PASSWORD not in text and TOKEN not in text


def _files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("files_", "expect"),
    [
        (
            {"FILES/a.conf.j2": "ok\n{{ nope }}\n"},
            r"common/files/.*/a\.conf\.j2 line 2: UndefinedError: 'nope' is undefined",
        ),
        (
            {"FILES/a.conf.j2": "{{ ''.__class__.__mro__ }}\n"},
            r"a\.conf\.j2 line 1: SecurityError: access to attribute '__class__'",
        ),
        (
            {"FILES/a.conf.j2": "{% for x in [1] %}\n{{ x }}\n"},
            r"a\.conf\.j2 line 2: Unexpected end of template",
        ),
        (
            {"FILES/a.conf.j2": "{{ labels[secrets.db.password] }}\n", "SECRETS": "mine"},
            r"a\.conf\.j2 line 1: UndefinedError: 'dict object' has no attribute '\*\*\*'",
        ),
        (
            {"FILES/token.age": "other-node"},
            r"common/files/.*/token\.age: cannot decrypt .*encrypted for other nodes only",
        ),
        (
            {"FILES/token.age": "corrupt"},
            r"common/files/.*/token\.age: cannot decrypt",
        ),
        (
            {"common/values.toml": "[app]\nport = 1\n", "NODE/values.toml": 'app = "x"\n'},
            r"key 'app' is a table in common/values\.toml but a string in "
            r"nodes/node-tpl/values\.toml",
        ),
        (
            {"common/edgefleet.toml": '[requires]\nagent = ">= 9.1"\n'},
            r"common: needs edgefleet-agent >= 9.1, this node runs 0\.2\.0",
        ),
        (
            {
                "common/systemd/app.service.j2": "[Service]\nEnvironment=P={{ secrets.db }}\n",
                "SECRETS": "mine",
            },
            r"app\.service\.j2: uses secrets, which may reach only files/",
        ),
    ],
    ids=[
        "undefined",
        "sandbox",
        "syntax",
        "masked",
        "other-node",
        "corrupt",
        "clash",
        "too-old",
        "secret-in-unit",
    ],
)
def test_bad_commit_is_refused_whole_naming_the_file(
    setup: AgentSetup,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    files_: dict[str, str],
    expect: str,
) -> None:
    recipient = keygen(setup)
    other = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True)
    other_recipient = other.stderr.split("Public key: ")[1].strip()
    content: dict[str, bytes | str] = {f"{files(setup)}/plain.conf": "must not be placed\n"}
    for name, text in files_.items():
        path = name.replace("FILES", files(setup)).replace("NODE", f"nodes/{NODE}")
        if name == "SECRETS":
            path = "common/secrets.toml.age"
            content[path] = age_encrypt(f'[db]\npassword = "{PASSWORD}"\n', recipient)
        elif text == "other-node":
            content[path] = age_encrypt(TOKEN, other_recipient)
        elif text == "corrupt":
            content[path] = age_encrypt(TOKEN, recipient)[:-20] + b"\x00" * 20
        else:
            content[path] = text
    content.setdefault(f"nodes/{NODE}/keep", "")
    fleet_repo.commit(content, sign=signing_key)
    done = setup.cli("sync", "--once")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("refused: "), done.stdout
    assert re.search(expect, done.stdout), done.stdout
    assert not (setup.root / "plain.conf").exists(), "a refused commit applied something"
    assert PASSWORD not in done.stdout + done.stderr and TOKEN not in done.stdout + done.stderr


DAEMON_PROBE = """
import asyncio, json, sys
from pathlib import Path
from agent.config import load_config
from agent.service import Agent

async def main():
    agent = Agent(load_config(Path(sys.argv[1])), with_reporter=False)
    try:
        outcome = await agent.sync_once()
    finally:
        await agent.close()
    loaded = sorted({m.split(".")[0] for m in sys.modules} & {"jinja2", "pyrage", "markupsafe"})
    print(json.dumps({"state": outcome.state, "loaded": loaded}))

asyncio.run(main())
"""


def test_the_agent_process_never_imports_jinja2_or_pyrage(
    setup: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    recipient = keygen(setup)
    fleet_repo.commit(
        {
            f"{files(setup)}/app.conf.j2": "{{ node }}\n",
            f"{files(setup)}/token.age": age_encrypt(TOKEN, recipient),
            f"nodes/{NODE}/values.toml": "x = 1\n",
        },
        sign=signing_key,
    )
    done = subprocess.run(
        [sys.executable, "-c", DAEMON_PROBE, str(setup.config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"state": "synced", "loaded": []}
    assert (setup.root / "app.conf").read_text() == f"{NODE}\n"
    assert (setup.root / "token").read_text() == TOKEN


def test_verify_renders_the_head_as_the_daemon_would(
    setup: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    fleet_repo.commit(
        {f"{files(setup)}/a.conf.j2": "{{ node }}\n", f"nodes/{NODE}/keep": ""}, sign=signing_key
    )
    done = setup.cli("verify")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet_repo.commit({f"{files(setup)}/a.conf.j2": "{{ missing }}\n"}, sign=signing_key)
    done = setup.cli("verify")
    assert done.returncode == 1
    assert "a.conf.j2 line 1: UndefinedError: 'missing' is undefined" in done.stderr
