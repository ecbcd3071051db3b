"""Waves inside a stage: membership (pure) and the wave engine against a real git daemon
and a real store, SQLite then PostgreSQL (node reports written as the ingest writes them)."""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.config import GitSettings, HubConfig, parse_config
from hub.errors import ConfigError
from hub.leader import Leadership, NotLeader
from hub.promote import StageGit
from hub.rollout import Rollout
from hub.store import Batch, HubStore, StatusRow
from hub.waveconf import Wave, name_bucket, wave_of, wave_ref
from tests.test_rollout import daemon  # noqa: F401 (a fixture)
from tests.testbed.fleetrepo import FleetRepo, git
from tests.testbed.gitserver import GitDaemon

pytestmark = pytest.mark.both_backends  # the wave engine runs on SQLite, then PostgreSQL

WAVES = """
[[stages]]
name = "beta"

[[stages]]
name = "stable"
promote_from = "beta"
gate = { soak = 0 }

[[stages.waves]]
name = "pilot"
select = { site = "pilot" }
soak = 60

[[stages.waves]]
name = "empty"
select = { site = "nowhere" }

[[stages.waves]]
name = "rest"
"""


def _parse(text: str, tmp_path: Path, url: str | None = None) -> HubConfig:
    head = f'[git]\nurl = "{url}"\n' if url else ""
    return parse_config(tomllib.loads(head + text), tmp_path / "fleet.toml")


# -- membership -----------------------------------------------------------------------


def test_percent_hash_is_sha256_of_the_name_mod_100() -> None:
    for node in ("shop-berlin-7", "a", "x" * 128):
        digest = hashlib.sha256(node.encode()).digest()
        assert name_bucket(node) == int.from_bytes(digest[:8], "big") % 100
    # Stable across calls and processes: no salt, no Python hash().
    assert name_bucket("shop-berlin-7") == name_bucket("shop-berlin-7")


def test_percentages_are_cumulative_and_first_match_wins() -> None:
    waves = (
        Wave("pilot", select={"site": "pilot"}),
        Wave("ten", percent=10),
        Wave("half", percent=50),
        Wave("rest"),
    )
    nodes = [f"node-{i}" for i in range(400)]
    got = {n: wave_of(waves, n, {}) for n in nodes}
    for node, wave in got.items():
        bucket = name_bucket(node)
        assert wave == ("ten" if bucket < 10 else "half" if bucket < 50 else "rest")
    # A pilot-labelled node is in the pilot even if its bucket is below 10.
    early = next(n for n in nodes if name_bucket(n) < 10)
    assert wave_of(waves, early, {"site": "pilot"}) == "pilot"
    # Relabelling moves it: membership is a function of the current labels.
    assert wave_of(waves, early, {"site": "other"}) == "ten"


def test_node_in_no_wave_follows_the_branch() -> None:
    assert wave_of((Wave("pilot", select={"site": "pilot"}),), "n1", {"site": "x"}) is None


@pytest.mark.parametrize(
    ("waves", "problem"),
    [
        ('[[stages.waves]]\nname = "rest"\n[[stages.waves]]\nname = "late"\npercent = 5\n',
         "takes the rest: it must be last"),
        ('[[stages.waves]]\nname = "a"\npercent = 50\n[[stages.waves]]\nname = "b"\n'
         "percent = 20\n", "cumulative"),
        ('[[stages.waves]]\nname = "a"\npercent = 5\nselect = { site = "x" }\n', "not both"),
        ('[[stages.waves]]\nname = "a"\npercent = 5\n[[stages.waves]]\nname = "a"\n',
         "defined twice"),
        ('[[stages.waves]]\nname = "a"\nsoaks = 5\n', "unknown key"),
        ('[[stages.waves]]\nname = "a"\npercent = 101\n', "percent"),
        ('[[stages.waves]]\nname = "A B"\n', "name"),
    ],
)  # fmt: skip
def test_bad_waves_are_config_errors(tmp_path: Path, waves: str, problem: str) -> None:
    text = '[[stages]]\nname = "beta"\n[[stages]]\nname = "stable"\npromote_from = "beta"\n'
    with pytest.raises(ConfigError, match=problem):
        _parse(text + waves, tmp_path)


def test_waves_need_promote_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="need promote_from"):
        _parse('[[stages]]\nname = "s"\n[[stages.waves]]\nname = "a"\n', tmp_path)


# -- the engine -----------------------------------------------------------------------


class Deposable(Leadership):
    """A leader whose lease another replica takes over while it still believes it
    leads (stalled): only the fencing check before each move tells it."""

    deposed = False

    async def fence(self) -> None:
        if self.deposed:
            raise NotLeader("lost the leader lease")


class Fleet:
    """The hub side of one test: store, rollout, a clock the test moves."""

    def __init__(self, cfg: HubConfig, store: HubStore, git: StageGit, heads: dict[str, str]):
        self.cfg, self.git = cfg, git
        self.leader = Deposable()
        self.now = 1_000_000.0
        self.store = store
        self.heads = heads
        self.seq: dict[str, int] = {}
        self.announced: dict[str, str | None] = {}
        self.woken: list[tuple[str, str]] = []
        self.rollout = Rollout(
            cfg, store, git, lambda: heads, self._moved, clock=lambda: self.now,
            wave_store=store, announce=self._announce, leader=self.leader,
        )  # fmt: skip

    def _announce(self, node: str, ref: str | None, commit: str | None) -> None:
        self.announced[node] = ref
        if commit is not None:
            self.woken.append((node, commit))

    def _moved(self, branch: str, head: str) -> None:
        self.heads[branch] = head

    async def report(self, node: str, state: str, applied: str, site: str,
                     desired: str | None = None) -> None:  # fmt: skip
        self.seq[node] = self.seq.get(node, 0) + 1
        doc = json.dumps({"labels": {"site": site}})
        await self.store.write_batch(Batch(statuses=[StatusRow(
            node, "stable", state, self.seq[node], applied, desired or applied, 0, 30.0,
            self.now, 90.0, self.now, doc, True)]))  # fmt: skip

    async def audit(self) -> list[tuple[str, str, str]]:
        rows = await self.rollout.history("stable")
        return [(a["action"], a["outcome"], a["reason"]) for a in reversed(rows)]


@pytest.fixture
async def fleet(  # type: ignore[misc]
    tmp_path: Path,
    daemon: tuple[FleetRepo, GitDaemon],  # noqa: F811
    any_store: HubStore,
) -> Iterator[tuple[Fleet, FleetRepo, str, str]]:
    repo, server = daemon
    c0 = repo.commit({"common/files/etc/motd": "v0\n"}, branch="beta")
    repo.push("stable", c0)
    c1 = repo.commit({"common/files/etc/motd": "v1\n"}, branch="beta")
    cfg = _parse(WAVES, tmp_path, server.url())
    git = StageGit(GitSettings(url=server.url()), tmp_path / "mirror.git")
    f = Fleet(cfg, any_store, git, {"beta": c1, "stable": c0})
    await f.report("p1", "synced", c0, "pilot")
    await f.report("r1", "synced", c0, "berlin")
    await f.report("r2", "synced", c0, "paris")
    yield f, repo, c0, c1


def wave_head(repo: FleetRepo, wave: str) -> str | None:
    out = git(repo.bare, "for-each-ref", "--format=%(objectname)", wave_ref("stable", wave))
    return out or None


async def test_pilot_first_then_the_rest_after_the_pilot_soak(
    fleet: tuple[Fleet, FleetRepo, str, str],
) -> None:
    f, repo, c0, c1 = fleet
    await f.rollout.promote("stable", "alice", "go", force=True)
    # The pilot holds the candidate; the branch (and so the rest) stays on c0.
    assert wave_head(repo, "pilot") == c1 and wave_head(repo, "rest") is None
    assert repo.head("stable") == c0
    assert f.announced == {"p1": wave_ref("stable", "pilot"), "r1": wave_ref("stable", "rest"),
                           "r2": wave_ref("stable", "rest")}  # fmt: skip
    await f.report("p1", "synced", c1, "pilot")
    await f.rollout.tick()
    assert wave_head(repo, "rest") is None  # pilot healthy, its 60 s soak just began
    status = (await f.rollout.status())["stable"]["waves"]
    assert status[0]["gate"] == f"1/1 nodes applied {c1[:7]}, soak 60s left"
    f.now += 61
    for node in ("p1", "r1", "r2"):
        await f.report(node, "synced", c1 if node == "p1" else c0, "x")
    await f.rollout.tick()
    # The last wave moves with the stage branch: its agents may know nothing of waves.
    assert wave_head(repo, "rest") == c1 and repo.head("stable") == c1
    assert f.heads["stable"] == c1
    assert f.woken == [("p1", c1), ("r1", c1), ("r2", c1)]
    status = (await f.rollout.status())["stable"]["waves"]
    assert [(w["name"], w["nodes"], w["on_candidate"], w["state"]) for w in status] == [
        ("pilot", 1, 1, "done"), ("empty", 0, 0, "skipped"), ("rest", 2, 0, "done")]  # fmt: skip
    assert await f.audit() == [
        ("wave", "done", "wave pilot started (1 nodes)"),
        ("promote", "done", "go"),
        ("wave", "skipped", "wave empty has no nodes"),
        ("wave", "done", "wave rest started (2 nodes)"),
        ("wave", "done", "last wave started: stable moved"),
    ]


async def test_failing_pilot_halts_the_later_waves(
    fleet: tuple[Fleet, FleetRepo, str, str],
) -> None:
    f, repo, c0, c1 = fleet
    await f.rollout.promote("stable", "alice", "go", force=True)
    await f.report("p1", "failed", c0, "pilot", desired=c1)
    await f.rollout.tick()
    f.now += 3600
    await f.rollout.tick()
    assert wave_head(repo, "rest") is None and repo.head("stable") == c0
    pause = (await f.store.pauses())["stable"]
    assert pause.kind == "halt" and "wave pilot" in pause.reason
    action, outcome, reason = (await f.audit())[-1]
    assert (action, outcome) == ("halt", "done") and "later waves halted" in reason
    status = (await f.rollout.status())["stable"]["waves"]
    assert [w["state"] for w in status] == ["halted", "skipped", "halted"]


async def test_a_deposed_leader_moves_no_further_wave(
    fleet: tuple[Fleet, FleetRepo, str, str],
) -> None:
    f, repo, c0, c1 = fleet
    await f.rollout.promote("stable", "alice", "go", force=True)
    assert wave_head(repo, "pilot") == c1
    await f.report("p1", "synced", c1, "pilot")
    await f.rollout.tick()  # the pilot's soak begins
    f.now += 61
    for node in ("p1", "r1", "r2"):
        await f.report(node, "synced", c1 if node == "p1" else c0, "x")
    f.leader.deposed = True
    with pytest.raises(NotLeader):
        await f.rollout.tick()  # the pilot's gate is open: the next wave would move now
    assert wave_head(repo, "rest") is None and repo.head("stable") == c0
    f.leader.deposed = False
    await f.rollout.tick()
    assert wave_head(repo, "rest") == c1 and repo.head("stable") == c1


async def test_rollback_moves_every_wave_back(
    fleet: tuple[Fleet, FleetRepo, str, str],
) -> None:
    f, repo, c0, c1 = fleet
    await f.rollout.promote("stable", "alice", "go", force=True)
    await f.rollout.rollback("stable", "alice", "not this one")
    assert wave_head(repo, "pilot") == c0 and repo.head("stable") == c0
    # After a completed run, a branch rollback moves the wave refs along.
    await f.rollout.resume("stable", "alice", "again")
    await f.rollout.promote("stable", "alice", "go again", force=True)
    assert wave_head(repo, "pilot") == c1
    for node in ("p1", "r1", "r2"):
        await f.report(node, "synced", c1, "berlin" if node != "p1" else "pilot")
    await f.rollout.tick()  # the pilot's soak begins
    f.now += 61
    await f.rollout.tick()  # the rest starts, with the branch
    assert repo.head("stable") == c1 and wave_head(repo, "rest") == c1
    await f.rollout.rollback("stable", "alice", "after all")
    assert repo.head("stable") == c0
    assert wave_head(repo, "pilot") == c0 and wave_head(repo, "rest") == c0


async def test_relabel_moves_a_node_at_the_next_promotion(
    fleet: tuple[Fleet, FleetRepo, str, str],
) -> None:
    f, _repo, c0, _c1 = fleet
    await f.rollout.promote("stable", "alice", "go", force=True)
    assert f.announced["r1"] == wave_ref("stable", "rest")
    await f.rollout.rollback("stable", "alice", "relabel first")
    await f.rollout.resume("stable", "alice", "again")
    await f.report("r1", "synced", c0, "pilot")  # the node's labels changed
    await f.rollout.promote("stable", "alice", "go again", force=True)
    assert f.announced["r1"] == wave_ref("stable", "pilot")
    status = (await f.rollout.status())["stable"]["waves"]
    assert [(w["name"], w["nodes"]) for w in status] == [("pilot", 2), ("empty", 0), ("rest", 1)]


async def test_a_hub_restart_continues_the_waves(
    fleet: tuple[Fleet, FleetRepo, str, str],
) -> None:
    f, repo, _c0, c1 = fleet
    await f.rollout.promote("stable", "alice", "go", force=True)
    await f.report("p1", "synced", c1, "pilot")
    await f.rollout.tick()  # the pilot's soak begins, and is stored
    # A new hub process: a new Rollout (nothing in memory) over the same database.
    again = Fleet(f.cfg, f.store, f.git, f.heads)
    again.now = f.now + 61
    await again.rollout.tick()
    assert repo.head("stable") == c1 and wave_head(repo, "rest") == c1


def test_stages_command_shows_each_wave() -> None:
    from hub.cli import show_stages  # noqa: PLC0415

    stage = {"name": "stable", "branch": "stable", "head": "a" * 40, "promote_from": "beta",
             "auto": False, "nodes": 3, "states": {"synced": 3}, "gate_status": None,
             "waves": [{"name": "pilot", "nodes": 1, "on_candidate": 1, "state": "rolling",
                        "gate": "1/1 nodes applied bbbbbbb, soak 59s left", "soak_left": 59},
                       {"name": "rest", "nodes": 2, "on_candidate": 0, "state": "waiting",
                        "gate": None, "soak_left": None}]}  # fmt: skip
    text = show_stages({"stages": [stage]})
    assert text.endswith(
        "stable waves:\n"
        "  pilot: 1/1 on candidate, rolling; 1/1 nodes applied bbbbbbb, soak 59s left\n"
        "  rest: 0/2 on candidate, waiting"
    )
