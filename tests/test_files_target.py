"""Files target against the real filesystem: placement, modes, hostile paths, drift."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.atomic import write_atomic
from agent.changeset import Action
from agent.config import FilesConfig
from agent.desired import GIT_MODE_EXEC, GIT_MODE_SYMLINK, DesiredFile, DesiredState
from agent.errors import ApplyError, PlanError
from agent.render.seal import ContentSeal
from agent.state import Owned
from agent.targets.base import ApplyContext
from agent.targets.files import ORIG_SUFFIX, FilesTarget


def desired(files: dict[str, bytes], commit: str = "c1", mode: int = 0o100644) -> DesiredState:
    return DesiredState(
        commit=commit,
        paths=("common",),
        files={
            f"files/{rel}": DesiredFile(f"files/{rel}", data, mode, "common")
            for rel, data in files.items()
        },
    )


class Inventory:
    def __init__(self) -> None:
        self.owned: dict[str, Owned] = {}

    def ctx(self, commit: str = "c1") -> ApplyContext:
        def record(target: str, subject: str, owned: Owned | None) -> None:
            assert target == "files"
            if owned is None:
                self.owned.pop(subject, None)
            else:
                self.owned[subject] = owned

        return ApplyContext(commit=commit, record=record)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def rel(root: Path, name: str) -> str:
    return str(root / name).lstrip("/")


async def converge(target: FilesTarget, inv: Inventory, want: DesiredState) -> dict[str, Action]:
    plan = await target.plan(want, inv.owned)
    ctx = inv.ctx(want.commit)
    await target.apply(plan, want, ctx)
    await target.prune(plan, ctx)
    return {c.subject: c.action for c in plan.changes}


async def test_create_update_delete_with_modes(root: Path) -> None:
    target = FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(root.parent))
    inv = Inventory()
    a, b = rel(root, "app/a.conf"), rel(root, "app/run.sh")
    want = desired({a: b"one\n"})
    want = DesiredState(
        "c1",
        ("common",),
        {
            **want.files,
            f"files/{b}": DesiredFile(f"files/{b}", b"#!/bin/sh\n", GIT_MODE_EXEC, "common"),
        },
    )
    actions = await converge(target, inv, want)
    assert set(actions.values()) == {Action.CREATED}
    assert (root / "app/a.conf").read_bytes() == b"one\n"
    assert (root / "app/a.conf").stat().st_mode & 0o777 == 0o644
    assert (root / "app/run.sh").stat().st_mode & 0o777 == 0o755

    mtime = (root / "app/run.sh").stat().st_mtime_ns
    actions = await converge(target, inv, desired({a: b"two\n"}, "c2"))
    assert actions == {
        str(root / "app/a.conf"): Action.CONFIGURED,
        str(root / "app/run.sh"): Action.DELETED,
    }
    assert (root / "app/a.conf").read_bytes() == b"two\n"
    assert not (root / "app/run.sh").exists()
    assert mtime  # the deleted file existed before

    before = (root / "app/a.conf").stat().st_mtime_ns
    actions = await converge(target, inv, desired({a: b"two\n"}, "c3"))
    assert actions == {str(root / "app/a.conf"): Action.UNCHANGED}
    assert (root / "app/a.conf").stat().st_mtime_ns == before, "unchanged bytes rewritten"
    assert not [p for p in (root / "app").iterdir() if p.name.startswith(".edgefleet-tmp")]


@pytest.mark.parametrize(
    "path",
    ["../escape.conf", "./x.conf", "a//b.conf", "x/../../y.conf"],
)
async def test_hostile_relative_paths_refused(root: Path, path: str) -> None:
    target = FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(root.parent))
    with pytest.raises(PlanError):
        await target.plan(desired({rel(root, "") + "/" + path: b"x"}), {})


async def test_outside_allowed_roots_and_no_roots(root: Path, tmp_path: Path) -> None:
    target = FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(root.parent))
    with pytest.raises(PlanError, match="outside allowed_roots"):
        await target.plan(desired({"etc/passwd": b"x"}), {})
    with pytest.raises(PlanError, match="no allowed_roots"):
        await FilesTarget(FilesConfig(), ContentSeal(root.parent)).plan(
            desired({rel(root, "a"): b"x"}), {}
        )
    # A prefix match is not containment: /x/root-evil is not under /x/root.
    evil = tmp_path / "root-evil"
    with pytest.raises(PlanError, match="outside allowed_roots"):
        await target.plan(desired({rel(tmp_path, "root-evil/a"): b"x"}), {})
    assert not evil.exists()


async def test_symlinks_refused_in_git_and_on_host(root: Path, tmp_path: Path) -> None:
    target = FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(root.parent))
    link = desired({rel(root, "link"): b"/etc/shadow"}, mode=GIT_MODE_SYMLINK)
    with pytest.raises(PlanError, match="symlink"):
        await target.plan(link, {})
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sneaky").symlink_to(outside)
    with pytest.raises(PlanError, match="outside allowed_roots"):
        await target.plan(desired({rel(root, "sneaky/x.conf"): b"x"}), {})
    (root / "file-link").symlink_to(outside / "victim")
    with pytest.raises(PlanError, match="symlink on the host"):
        await target.plan(desired({rel(root, "file-link"): b"x"}), {})
    assert list(outside.iterdir()) == []


async def test_unmanaged_file_is_kept_before_takeover(root: Path) -> None:
    target = FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(root.parent))
    (root / "app.conf").write_bytes(b"hand made\n")
    inv = Inventory()
    await converge(target, inv, desired({rel(root, "app.conf"): b"from git\n"}))
    assert (root / "app.conf").read_bytes() == b"from git\n"
    assert (root / f"app.conf{ORIG_SUFFIX}").read_bytes() == b"hand made\n"


async def test_adopts_identical_file_without_writing(root: Path) -> None:
    """What a kill -9 between rename and inventory record leaves behind."""
    target = FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(root.parent))
    path = root / "same.conf"
    path.write_bytes(b"same\n")
    os.chmod(path, 0o644)
    before = path.stat().st_mtime_ns
    inv = Inventory()
    plan = await target.plan(desired({rel(root, "same.conf"): b"same\n"}), inv.owned)
    assert "adopted" in plan.changes[0].detail
    await target.apply(plan, desired({rel(root, "same.conf"): b"same\n"}), inv.ctx())
    assert path.stat().st_mtime_ns == before
    assert str(path) in inv.owned
    assert not (root / f"same.conf{ORIG_SUFFIX}").exists()


async def test_drift_detected_and_corrected(root: Path) -> None:
    target = FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(root.parent))
    inv = Inventory()
    want = desired({rel(root, "a"): b"a\n", rel(root, "b"): b"b\n", rel(root, "c"): b"c\n"})
    await converge(target, inv, want)
    assert await target.drift(want, inv.owned) == []
    (root / "a").write_bytes(b"edited\n")
    (root / "b").unlink()
    os.chmod(root / "c", 0o600)
    (root / "unmanaged").write_bytes(b"never reported")
    found = await target.drift(want, inv.owned)
    kinds = {d["subject"]: d["kind"] for d in found}
    assert kinds == {
        str(root / "a"): "modified",
        str(root / "b"): "missing",
        str(root / "c"): "modified",
    }
    await target.correct(found, want, inv.ctx())
    assert await target.drift(want, inv.owned) == []
    assert (root / "a").read_bytes() == b"a\n"
    assert (root / "unmanaged").read_bytes() == b"never reported"


async def test_full_disk_keeps_old_file(root: Path) -> None:
    """A full filesystem fails the write with ENOSPC: the old bytes stay in place."""
    path = root / "keep.conf"
    path.write_bytes(b"old\n")
    # A directory on a full tmpfs: mount a 1-block tmpfs and fill it.
    small = root / "small"
    small.mkdir()
    rc = os.system(f"mount -t tmpfs -o size=16k tmpfs {small}")
    assert rc == 0, "mounting a tmpfs needs root (CI runs as root)"
    try:
        (small / "keep.conf").write_bytes(b"old\n")
        with pytest.raises(OSError) as info:
            write_atomic(small / "keep.conf", b"x" * 1_000_000)
        assert info.value.errno == 28
        assert (small / "keep.conf").read_bytes() == b"old\n"
        assert [p.name for p in small.iterdir()] == ["keep.conf"]
    finally:
        os.system(f"umount {small}")


async def test_missing_allowed_root_is_created(tmp_path: Path) -> None:
    """A fresh device: the allowed root and its parents do not exist yet."""
    root = tmp_path / "srv" / "app"
    target = FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(tmp_path))
    inv = Inventory()
    old = os.umask(0o077)
    try:
        await converge(target, inv, desired({rel(root, "conf/app.conf"): b"v1\n"}))
    finally:
        os.umask(old)
    assert (root / "conf/app.conf").read_bytes() == b"v1\n"
    assert root.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "srv").stat().st_mode & 0o777 == 0o755
    assert root.stat().st_uid == os.getuid()


async def test_missing_root_behind_a_planted_symlink_is_refused(tmp_path: Path) -> None:
    """An attacker links an ancestor of a not-yet-existing root somewhere else."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "x" / "srv" / "app"
    target = FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(tmp_path))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "srv").symlink_to(elsewhere)
    with pytest.raises(PlanError, match="outside allowed_roots"):
        await target.plan(desired({rel(root, "app.conf"): b"x"}), {})
    # Linked before the agent started: still refused.
    with pytest.raises(PlanError, match="outside allowed_roots"):
        await FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(tmp_path)).plan(
            desired({rel(root, "app.conf"): b"x"}), {}
        )
    assert list(elsewhere.iterdir()) == []


async def test_symlink_planted_between_plan_and_apply_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "x" / "srv" / "app"
    target = FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(tmp_path))
    want = desired({rel(root, "app.conf"): b"x"})
    plan = await target.plan(want, {})
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "srv").symlink_to(elsewhere)
    with pytest.raises(ApplyError, match="outside allowed_roots"):
        await target.apply(plan, want, Inventory().ctx())
    assert list(elsewhere.iterdir()) == []


async def test_regular_file_where_a_directory_is_needed(root: Path) -> None:
    (root / "etc").write_text("a file\n")
    target = FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(root.parent))
    with pytest.raises(PlanError, match=f"{root}/etc exists and is not a directory"):
        await target.plan(desired({rel(root, "etc/app.conf"): b"x"}), {})
    with pytest.raises(PlanError, match=f"{root}/etc exists and is not a directory"):
        await target.plan(desired({rel(root, "etc/deeper/app.conf"): b"x"}), {})


async def test_drift_of_a_file_whose_directory_became_a_file(root: Path) -> None:
    target = FilesTarget(FilesConfig(allowed_roots=(root,)), ContentSeal(root.parent))
    inv = Inventory()
    want = desired({rel(root, "etc/app.conf"): b"v1\n"})
    await converge(target, inv, want)
    (root / "etc/app.conf").unlink()
    (root / "etc").rmdir()
    (root / "etc").write_text("a file\n")
    drift = await target.drift(want, inv.owned)
    assert [(d["subject"], d["kind"]) for d in drift] == [(str(root / "etc/app.conf"), "missing")]
