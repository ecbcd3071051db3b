"""Files target: ``files/<path>`` in the repository becomes ``/<path>`` on the host.

Only paths under ``allowed_roots`` may be written. ``..``, absolute names, symlinks in
Git and symlinked directories on the host that lead outside the allowed roots are
refused at plan time, so a hostile commit writes nothing. Writes are atomic (temp +
rename). A pre-existing file the agent does not own is kept as ``<name>.edgefleet-orig``
before it is first replaced, so taking a file over loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from agent.atomic import remove_stale_temps, write_atomic
from agent.changeset import Action, ChangeSet
from agent.config import FilesConfig
from agent.desired import GIT_MODE_SYMLINK, DesiredFile, DesiredState
from agent.errors import ApplyError, PlanError
from agent.render.seal import ContentSeal
from agent.state import Owned
from agent.targets.base import ApplyContext, HealthProblem
from common.wire import DriftItem

ORIG_SUFFIX = ".edgefleet-orig"
log = logging.getLogger(__name__)


class FilesTarget:
    name = "files"

    def __init__(self, cfg: FilesConfig, seal: ContentSeal) -> None:
        self.configured = tuple(Path(os.path.normpath(r)) for r in cfg.allowed_roots)
        # Compare against resolved roots so a symlinked root (/srv -> /data/srv) still works.
        self.roots = tuple(Path(os.path.realpath(r)) for r in self.configured)
        self.seal = seal

    # -- validation ---------------------------------------------------------------------

    def host_path(self, rel: str, f: DesiredFile | None = None) -> Path:
        """Map ``etc/app.conf`` to ``/etc/app.conf``; PlanError for anything hostile."""
        where = f"{f.origin}/files/{rel}" if f else rel
        pure = PurePosixPath(rel)
        if pure.is_absolute() or any(p in ("", ".", "..") for p in rel.split("/")):
            raise PlanError(f"{where}: path must be relative without '.' or '..'")
        if f is not None and f.git_mode == GIT_MODE_SYMLINK:
            raise PlanError(f"{where}: symlinks are not placed on the host")
        host = Path("/", *pure.parts)
        if not self.roots:
            raise PlanError(f"{where}: no allowed_roots configured; {host} may not be written")
        if not any(host.is_relative_to(root) and host != root for root in self.roots):
            roots = ", ".join(map(str, self.roots))
            raise PlanError(f"{where}: {host} is outside allowed_roots ({roots})")
        self._check_no_escape(host, where)
        return host

    def _check_no_escape(self, host: Path, where: str) -> None:
        """The deepest existing ancestor, resolved, must still be inside an allowed root."""
        ancestor = host.parent
        while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        real = Path(os.path.realpath(ancestor))
        inside = any(real == root or real.is_relative_to(root) for root in self.roots)
        if not inside and self._missing_root(host) is None:
            raise PlanError(f"{where}: {host.parent} resolves to {real}, outside allowed_roots")
        if not os.path.isdir(real):
            raise PlanError(f"{where}: {ancestor} exists and is not a directory")
        try:
            st = host.lstat()
        except FileNotFoundError:
            return
        except OSError as err:
            raise PlanError(f"{where}: cannot inspect {host}: {err.strerror}") from err
        if stat.S_ISLNK(st.st_mode):
            raise PlanError(f"{where}: {host} is a symlink on the host; refusing to follow it")
        if not stat.S_ISREG(st.st_mode):
            raise PlanError(f"{where}: {host} exists and is not a regular file")

    def _missing_root(self, host: Path) -> Path | None:
        """The allowed root ``host`` is under if that root does not exist yet and may be made.

        It may when every existing ancestor is a real directory that resolves to itself: a
        symlink on the way (planted or not) could lead the new root anywhere.
        """
        for root in self.configured:
            if not host.is_relative_to(root) or os.path.lexists(root):
                continue
            ancestor = root.parent
            while not os.path.lexists(ancestor):
                ancestor = ancestor.parent
            if os.path.realpath(ancestor) == str(ancestor) and os.path.isdir(ancestor):
                return root
        return None

    def _make_root(self, host: Path) -> None:
        """Create the missing allowed root above ``host`` (0755), refusing any symlink.

        Safe before the escape check: it only creates a root no symlink leads to.
        """
        root = self._missing_root(host)
        if root is None:
            return
        for part in (*reversed(root.parents), root):
            try:
                os.mkdir(part, 0o755)
            except FileExistsError as err:
                if os.path.islink(part) or not os.path.isdir(part):
                    raise ApplyError(
                        f"{part} changed under the agent; not creating {root}"
                    ) from err
                continue
            os.chmod(part, 0o755)  # noqa: S103  # umask must not narrow an allowed root
        log.info("files: created missing allowed root %s", root)

    # -- Target protocol ---------------------------------------------------------------

    async def plan(self, desired: DesiredState, owned: Mapping[str, Owned]) -> ChangeSet:
        return await asyncio.to_thread(self._plan, desired, owned)

    def _plan(self, desired: DesiredState, owned: Mapping[str, Owned]) -> ChangeSet:
        plan = ChangeSet(self.name)
        wanted: set[str] = set()
        for rel, f in sorted(desired.under("files").items()):
            host = self.host_path(rel, f)
            subject = str(host)
            wanted.add(subject)
            have = owned.get(subject)
            if have is None:
                plan.add(subject, Action.CREATED, self._takeover_detail(host, f))
            elif not self.seal.matches(f.data, have.digest) or have.meta.get("mode") != f.mode:
                plan.add(subject, Action.CONFIGURED)
            else:
                plan.add(subject, Action.UNCHANGED)
        for subject in sorted(set(owned) - wanted):
            plan.add(subject, Action.DELETED)
        return plan

    @staticmethod
    def _takeover_detail(host: Path, f: DesiredFile) -> str:
        try:
            current = host.read_bytes()
        except FileNotFoundError:
            return ""
        if current == f.data:
            return "adopted: already has the desired bytes"
        return f"replaces an unmanaged file, kept as {host.name}{ORIG_SUFFIX}"

    async def apply(self, plan: ChangeSet, desired: DesiredState, ctx: ApplyContext) -> None:
        files = desired.under("files")
        by_host = {str(Path("/", rel)): f for rel, f in files.items()}
        for change in plan.of(Action.CREATED, Action.CONFIGURED):
            f = by_host[change.subject]
            await asyncio.to_thread(self._write, change.subject, f, change.action)
            owned = Owned(self.seal.digest(f), desired.commit, {"mode": f.mode})
            ctx.record(self.name, change.subject, owned)

    def _write(self, subject: str, f: DesiredFile, action: Action) -> None:
        host = Path(subject)
        try:
            # Re-check right before writing: the host may have changed since plan.
            self._make_root(host)
            self._check_no_escape(host, subject)
            if action is Action.CREATED and host.exists():
                current = host.read_bytes()
                if current == f.data and stat.S_IMODE(host.stat().st_mode) == f.mode:
                    return
                backup = host.with_name(host.name + ORIG_SUFFIX)
                if current != f.data and not backup.exists():
                    shutil.copy2(host, backup)
            host.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            write_atomic(host, f.data, f.mode)
        except PlanError as err:
            raise ApplyError(str(err)) from err
        except OSError as err:
            raise ApplyError(f"cannot write {host}: {err.strerror or err}") from err

    async def prune(self, plan: ChangeSet, ctx: ApplyContext) -> None:
        for change in plan.of(Action.DELETED):
            try:
                await asyncio.to_thread(Path(change.subject).unlink, missing_ok=True)
            except OSError as err:
                raise ApplyError(f"cannot delete {change.subject}: {err.strerror}") from err
            ctx.record(self.name, change.subject, None)

    async def health(self, desired: DesiredState, ctx: ApplyContext) -> list[HealthProblem]:
        return []

    async def drift(self, desired: DesiredState, owned: Mapping[str, Owned]) -> list[DriftItem]:
        return await asyncio.to_thread(self._drift, owned)

    def _drift(self, owned: Mapping[str, Owned]) -> list[DriftItem]:
        items: list[DriftItem] = []
        for subject, have in sorted(owned.items()):
            path = Path(subject)
            try:
                st = path.lstat()
            except (FileNotFoundError, NotADirectoryError):
                items.append(
                    DriftItem(
                        target=self.name, subject=subject, kind="missing", detail="file deleted"
                    )
                )
                continue
            if not stat.S_ISREG(st.st_mode):
                items.append(
                    DriftItem(
                        target=self.name,
                        subject=subject,
                        kind="modified",
                        detail="no longer a regular file",
                    )
                )
                continue
            want_mode = have.meta.get("mode")
            if not self.seal.matches(path.read_bytes(), have.digest):
                items.append(
                    DriftItem(
                        target=self.name,
                        subject=subject,
                        kind="modified",
                        detail="content differs from Git",
                    )
                )
            elif want_mode is not None and stat.S_IMODE(st.st_mode) != want_mode:
                items.append(
                    DriftItem(
                        target=self.name,
                        subject=subject,
                        kind="modified",
                        detail=f"mode {stat.S_IMODE(st.st_mode):04o}, want {want_mode:04o}",
                    )
                )
        return items

    async def correct(
        self, drift: list[DriftItem], desired: DesiredState, ctx: ApplyContext
    ) -> None:
        by_host = {str(Path("/", rel)): f for rel, f in desired.under("files").items()}
        for item in drift:
            f = by_host.get(item["subject"])
            if item["target"] != self.name or f is None:
                continue
            await asyncio.to_thread(self._write, item["subject"], f, Action.CONFIGURED)
            # Same bytes as recorded, except for a template re-rendered with changed facts
            # (a kernel upgrade): then the inventory must follow, or the drift never ends.
            owned = Owned(self.seal.digest(f), desired.commit, {"mode": f.mode})
            ctx.record(self.name, item["subject"], owned)

    def cleanup(self, owned: Mapping[str, Owned]) -> int:
        """Remove temp files a killed agent left next to managed files."""
        dirs = {Path(subject).parent for subject in owned}
        return sum(remove_stale_temps(d) for d in dirs)

    async def close(self) -> None:
        return None
