"""The Git watcher: stage heads from a real repository, retained ref notifications."""

from __future__ import annotations

import json
import queue
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from common import wire
from hub.config import GitSettings, parse_config
from hub.errors import ConfigError, GitWatchError
from hub.gitwatch import GitWatch
from tests.testbed.fleetrepo import FleetRepo
from tests.testbed.gitserver import GitRemote
from tests.testbed.hubproc import HubProc
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import stop_client


@pytest.fixture
def refs(mosquitto: Mosquitto) -> Iterator[queue.Queue[tuple[str, bytes, bool]]]:
    """Every message on edgefleet/v1/ref/#: (topic, payload, retained)."""
    got: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, m: got.put((m.topic, m.payload, bool(m.retain)))
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe(f"{wire.PREFIX}/ref/#", qos=1)
    client.loop_start()
    yield got
    stop_client(client)


def test_heads_tracked_and_announced(
    hub_factory: Callable[..., HubProc],
    fleet_repo: FleetRepo,
    refs: queue.Queue[tuple[str, bytes, bool]],
    mosquitto: Mosquitto,
) -> None:
    first = fleet_repo.commit({"common/files/etc/a": "1"}, branch="canary")
    stable = fleet_repo.commit({"common/files/etc/a": "1"}, branch="stable")
    hub = hub_factory(git_url=fleet_repo.url)
    hub.wait_for(lambda: hub.get("/api/v1/summary")["stages"]["canary"]["head"] == first)
    stages = {s["name"]: s["head"] for s in hub.get("/api/v1/stages")["stages"]}
    assert stages == {"canary": first, "beta": None, "stable": stable}
    seen = {refs.get(timeout=5)[0] for _ in range(2)}
    assert seen == {wire.ref_topic("canary"), wire.ref_topic("stable")}

    second = fleet_repo.commit({"common/files/etc/a": "2"}, branch="canary")
    topic, payload, _ = refs.get(timeout=5)
    assert topic == wire.ref_topic("canary")
    assert wire.parse_ref_payload(payload) == second
    assert json.loads(payload)["at"] > 0

    # retained: an agent connecting later learns the head at once
    late: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, m: late.put(m.payload)
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe(wire.ref_topic("canary"), qos=1)
    client.loop_start()
    try:
        assert wire.parse_ref_payload(late.get(timeout=5)) == second
    finally:
        stop_client(client)


def test_unreachable_repository_is_logged_not_fatal(
    hub_factory: Callable[..., HubProc], tmp_path: object
) -> None:
    hub = hub_factory(git_url="file:///nonexistent/fleet.git")
    hub.wait_for(lambda: "ls-remote" in hub.log_text())
    assert hub.get("/api/v1/summary")["stages"]["canary"]["head"] is None
    assert hub.log_text().count("ls-remote") == 1  # logged once, on the transition


async def test_a_poll_announces_only_when_allowed_and_only_what_is_new(
    fleet_repo: FleetRepo,
) -> None:
    """The hub passes its leader check: a standby, or a leader whose fencing token the
    database no longer confirms, announces nothing; the question is asked only when a
    head is new."""
    published: list[str] = []
    asked: list[bool] = []
    allowed = False

    async def may_announce() -> bool:
        asked.append(allowed)
        return allowed

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        published.append(wire.parse_ref_payload(payload) or "")
        return True

    first = fleet_repo.commit({"common/files/etc/a": "1"}, branch="stable")
    watch = GitWatch(GitSettings(url=fleet_repo.url), ("stable",), publish, may_announce)
    assert await watch.poll_once() == {"stable": first}
    assert (published, asked) == ([], [False])  # known, not announced
    allowed = True
    await watch.poll_once()
    await watch.poll_once()  # nothing new: not even asked
    assert (published, asked) == ([first], [False, True])


def _watch(settings: GitSettings, branches: tuple[str, ...] = ("stable",)) -> GitWatch:
    return GitWatch(settings, branches, lambda topic, payload, qos, retain: True)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["git", "http"])
async def test_hung_git_server_fails_the_poll_within_the_timeout(
    silent_git_url: str, scheme: str
) -> None:
    url = silent_git_url.replace("git://", f"{scheme}://")
    watch = _watch(GitSettings(url=url, timeout=1.0))
    with pytest.raises(GitWatchError, match=rf"git ls-remote {scheme}://\S+: no answer within 1s"):
        await watch.poll_once()
    assert watch.heads == {}


@pytest.mark.parametrize("git_remote", ["ssh"], indirect=True)
async def test_ssh_host_keys_are_strict(git_remote: GitRemote, tmp_path: Path) -> None:
    head = git_remote.repo.commit({"common/a": "a"})
    key, known = git_remote.settings["ssh_key"], git_remote.settings["known_hosts"]
    watch = _watch(GitSettings(url=git_remote.url, ssh_key=key, known_hosts=known))
    assert await watch.poll_once() == {"stable": head}

    unknown = tmp_path / "known_hosts_empty"
    unknown.write_text("")
    watch = _watch(GitSettings(url=git_remote.url, ssh_key=key, known_hosts=unknown))
    with pytest.raises(GitWatchError, match=f"Host key verification failed.*{unknown}"):
        await watch.poll_once()
    assert unknown.read_text() == ""  # never accepted on first use


@pytest.mark.parametrize("git_remote", ["https"], indirect=True)
async def test_token_and_ca_file_and_no_secret_in_errors(git_remote: GitRemote) -> None:
    head = git_remote.repo.commit({"common/a": "a"})
    token_file, ca_file = git_remote.settings["token_file"], git_remote.settings["ca_file"]
    settings = GitSettings(url=git_remote.url, token_file=token_file, ca_file=ca_file)
    assert await _watch(settings).poll_once() == {"stable": head}

    token_file.write_text("wrong-token-123\n")
    with_password = git_remote.url.replace("https://", "https://ops:url-pass-456@")
    for url in (git_remote.url, with_password):
        watch = _watch(GitSettings(url=url, token_file=token_file, ca_file=ca_file))
        with pytest.raises(GitWatchError, match="authentication failed") as info:
            await watch.poll_once()
        assert "wrong-token-123" not in str(info.value)
        assert "url-pass-456" not in str(info.value)


def test_git_known_hosts_and_timeout_from_fleet_toml(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    (tmp_path / "known_hosts").write_text("")
    git = {"url": "ssh://git@git.example.org/fleet.git", "known_hosts": "known_hosts"}
    cfg = parse_config({"git": {**git, "timeout": 5}}, path)
    assert (cfg.git.known_hosts, cfg.git.timeout) == (tmp_path / "known_hosts", 5.0)
    assert parse_config({"git": git}, path).git.timeout == 30.0  # the agent's default
    with pytest.raises(ConfigError, match=r"git\.timeout: must be between 1 and 3600"):
        parse_config({"git": {**git, "timeout": 0.5}}, path)
    with pytest.raises(ConfigError, match=r"known_hosts.*does not exist"):
        parse_config({"git": {**git, "known_hosts": "missing"}}, path)
