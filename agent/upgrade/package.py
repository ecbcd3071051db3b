"""The .deb side of an agent upgrade: what a package is, what is installed, what is kept.

Kept packages live in ``state_dir/packages/edgefleet_<version>.deb``: the one the node
runs (for rollback) and the one it upgrades to. A node installed from a .deb that was
never downloaded by the agent (enrolled, installed by hand) gets its running package
rebuilt from dpkg's database (as dpkg-repack does), so a rollback never needs the network.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from agent.errors import ApplyError
from agent.upgrade.fetch import PackageRefused

PACKAGE = "edgefleet"
DPKG_INFO = Path("/var/lib/dpkg/info")
MAINTAINER_SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "conffiles")
# The control fields a rebuilt package needs, from dpkg's database.
CONTROL_FORMAT = (
    "Package: ${Package}\nVersion: ${Version}\nArchitecture: ${Architecture}\n"
    "Maintainer: ${Maintainer}\nDepends: ${Depends}\nDescription: ${Description}\n"
)


async def run(*cmd: str, limit: float = 300.0) -> tuple[int, str, str]:
    """Run a command; (exit code, stdout, stderr). A missing program is exit 127."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except FileNotFoundError:
        return 127, "", f"{cmd[0]}: not found"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def package_path(state_dir: Path, version: str) -> Path:
    return state_dir / "packages" / f"{PACKAGE}_{version}.deb"


async def installed_version() -> str | None:
    """The version dpkg has installed and configured, or None (install.sh, no dpkg)."""
    rc, out, _ = await run("dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", PACKAGE)
    status, _, version = out.partition("|")
    return version if rc == 0 and status.strip() == "ii" else None


async def check_package(deb: Path, version: str) -> None:
    """PackageRefused unless ``deb`` is edgefleet ``version`` for this machine."""
    rc, out, err = await run("dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture")
    if rc != 0:
        raise PackageRefused(f"{deb.name} is not a Debian package: {err.strip()}")
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    if fields.get("Package") != PACKAGE:
        raise PackageRefused(f"package is {fields.get('Package')!r}, not {PACKAGE}")
    if fields.get("Version") != version:
        raise PackageRefused(f"package is version {fields.get('Version')}, the pin says {version}")
    _, host, _ = await run("dpkg", "--print-architecture")
    arch = fields.get("Architecture")
    if arch not in ("all", host.strip()):
        raise PackageRefused(f"package is for {arch}, this node is {host.strip()}")


async def keep_running_package(state_dir: Path, version: str) -> Path:
    """The installed package as a .deb (kept, or rebuilt from dpkg's database)."""
    dest = package_path(state_dir, version)
    if dest.exists():
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            await _repack(Path(tmp), dest)
    except OSError as err:
        raise ApplyError(f"cannot rebuild the installed {PACKAGE} package: {err}") from err
    return dest


async def _repack(work: Path, dest: Path) -> None:
    rc, listing, err = await run("dpkg-query", "-L", PACKAGE)
    _, control, _ = await run("dpkg-query", "-W", f"-f={CONTROL_FORMAT}", PACKAGE)
    if rc != 0 or not control:
        raise ApplyError(f"cannot list the installed {PACKAGE} package: {err.strip()}")
    root = work / "root"
    (root / "DEBIAN").mkdir(parents=True)
    await asyncio.to_thread(_copy_files, listing.splitlines(), root)
    (root / "DEBIAN/control").write_text(control)
    for script in MAINTAINER_SCRIPTS:
        src = DPKG_INFO / f"{PACKAGE}.{script}"
        if src.exists():
            shutil.copy2(src, root / "DEBIAN" / script)
    part = dest.with_suffix(".repack")
    rc, _, err = await run(
        "dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(root), str(part)
    )
    if rc != 0:
        raise ApplyError(f"cannot rebuild the installed {PACKAGE} package: {err.strip()}")
    part.replace(dest)


def _copy_files(names: list[str], root: Path) -> None:
    # A listed path that others are listed under is a directory of the package, even
    # when the host made it a symlink (merged /usr: /lib -> usr/lib): not copied as such.
    dirs = {str(Path(n).parent) for n in names}
    for name in names:
        src = Path(name)
        if not name.startswith("/") or name in dirs:
            continue
        if src.is_symlink() or src.is_file():
            target = root / name.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target, follow_symlinks=False)


def prune_packages(state_dir: Path, keep: set[str]) -> None:
    """Drop kept packages of versions that are neither running nor one step back."""
    for deb in (state_dir / "packages").glob(f"{PACKAGE}_*.deb"):
        if deb.name.removeprefix(f"{PACKAGE}_").removesuffix(".deb") not in keep:
            deb.unlink(missing_ok=True)
