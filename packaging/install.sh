#!/bin/sh
# Plain install for distributions without dpkg: a private venv under /opt/edgefleet, the
# systemd units, the hub's system user, /etc/edgefleet and /var/lib/edgefleet.
# Like the .deb it neither enables nor starts anything while /etc/edgefleet/agent.toml
# is missing. Run again to upgrade (config and state are kept); a failed upgrade leaves
# the previous install as it was.
#
# usage: packaging/install.sh [--wheelhouse DIR]
#        packaging/install.sh --uninstall [--purge]
# env:   PYTHON (default python3, >= 3.11), EDGEFLEET_EXTRAS (default k3s),
#        WHEELHOUSE (same as --wheelhouse)
#
# Offline (no index reachable, e.g. on an edge device): --wheelhouse DIR installs with
# `pip --no-index --find-links DIR` the edgefleet wheel of this checkout's version and its
# dependencies, all from DIR. Make DIR on a machine with network and the same Python
# version and CPU architecture as the target, in this checkout:
#     pip wheel --wheel-dir DIR '.[k3s]'
set -eu

src=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/edgefleet
units=/etc/systemd/system
tmpfiles=/usr/lib/tmpfiles.d/edgefleet.conf
python=${PYTHON:-python3}
extras=${EDGEFLEET_EXTRAS-k3s}
wheelhouse=${WHEELHOUSE:-}
booted() { [ -d /run/systemd/system ]; }
usage() { sed -n '8,11p' "$0" >&2; exit 2; }

uninstall=
purge=
while [ $# -gt 0 ]; do
    case $1 in
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        --wheelhouse) [ $# -ge 2 ] || usage; wheelhouse=$2; shift ;;
        --wheelhouse=*) wheelhouse=${1#--wheelhouse=} ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; usage ;;
    esac
    shift
done
if [ -n "$purge" ] && [ -z "$uninstall" ]; then
    echo "install.sh: --purge only goes with --uninstall" >&2
    exit 2
fi
if [ -n "$wheelhouse" ] && [ ! -d "$wheelhouse" ]; then
    echo "install.sh: wheelhouse $wheelhouse is not a directory" >&2
    exit 2
fi

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root" >&2
    exit 1
fi

if [ -n "$uninstall" ]; then
    if booted; then
        systemctl disable --now edgefleet-agent.service edgefleet-hub.service 2>/dev/null || true
    fi
    rm -rf "$prefix" "$units/edgefleet-agent.service" "$units/edgefleet-hub.service" \
        /usr/local/bin/edgefleet-agent /usr/local/bin/edgefleet-hub "$tmpfiles"
    if [ -n "$purge" ]; then
        rm -rf /etc/edgefleet /var/lib/edgefleet /var/lib/edgefleet-hub
    fi
    if booted; then systemctl daemon-reload; fi
    exit 0
fi

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install.sh: $python is older than 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 1
}
# The venv links to the real interpreter, not to a "python3" alias (or a pyenv shim) that
# may point elsewhere after an OS upgrade.
python=$("$python" -c 'import os, sys; print(os.path.realpath(sys.executable))')

# Build the new venv beside the old one and swap, so a failed pip leaves the old install.
new=$prefix/venv.new
work=$(mktemp -d)
trap 'rm -rf "$new" "$work"' EXIT
rm -rf "$new"
mkdir -p "$prefix/bin"
"$python" -m venv --prompt edgefleet "$new"
pip_install() { "$new/bin/pip" install --quiet --no-compile --disable-pip-version-check "$@"; }
if [ -n "$wheelhouse" ]; then
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$src/pyproject.toml")
    pip_install --no-index --find-links "$wheelhouse" "edgefleet${extras:+[$extras]}==$version"
else
    # Build from a copy: pip's in-tree build would write build/ and *.egg-info into $src.
    tar -C "$src" --exclude=__pycache__ --exclude='*.egg-info' \
        -cf - pyproject.toml README.md agent common hub | tar -C "$work" -xf -
    pip_install "$work${extras:+[$extras]}"
fi
# The venv's scripts name their interpreter by path: rewrite venv.new -> venv.
grep -rlI --null -F "$new" "$new/bin" "$new/pyvenv.cfg" |
    xargs -0 --no-run-if-empty sed -i "s|$new|$prefix/venv|g"
# Byte-compile for the final path (tracebacks name real files; the unit need not write
# under /opt at run time).
"$new/bin/python" -m compileall -q -j 0 -s "$new" -p "$prefix/venv" "$new/lib"

if booted; then systemctl stop edgefleet-agent.service edgefleet-hub.service 2>/dev/null || true; fi
rm -rf "$prefix/venv.old"
if [ -e "$prefix/venv" ]; then mv "$prefix/venv" "$prefix/venv.old"; fi
mv "$new" "$prefix/venv"
rm -rf "$prefix/venv.old"
install -d -m 0755 /usr/local/bin
for prog in edgefleet-agent edgefleet-hub; do
    ln -sfn "../venv/bin/$prog" "$prefix/bin/$prog"
    ln -sfn "$prefix/bin/$prog" "/usr/local/bin/$prog"
done

install -m 0644 "$src/systemd/edgefleet-agent.service" "$src/systemd/edgefleet-hub.service" "$units/"
install -d -m 0755 /etc/edgefleet
install -d -m 0700 /var/lib/edgefleet
install -m 0644 "$src/packaging/agent.toml.example" /etc/edgefleet/agent.toml.example
if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers - <"$src/packaging/sysusers.conf"
else
    id edgefleet-hub >/dev/null 2>&1 || useradd --system --user-group \
        --home-dir /var/lib/edgefleet-hub --shell /usr/sbin/nologin edgefleet-hub
    getent group edgefleet-inhibit >/dev/null || groupadd --system edgefleet-inhibit
fi
install -D -m 0644 "$src/packaging/tmpfiles.conf" "$tmpfiles"
# /run/edgefleet/inhibit now, not only from the next boot.
if command -v systemd-tmpfiles >/dev/null; then systemd-tmpfiles --create "$tmpfiles"; fi

if booted; then systemctl daemon-reload; fi
if [ -e /etc/edgefleet/agent.toml ]; then
    systemctl enable edgefleet-agent.service
    if booted; then systemctl restart edgefleet-agent.service; fi
else
    echo "edgefleet: the agent stays off until /etc/edgefleet/agent.toml exists" \
        "(see /etc/edgefleet/agent.toml.example), then: systemctl enable --now edgefleet-agent"
fi
if booted && systemctl is-enabled --quiet edgefleet-hub.service 2>/dev/null; then
    systemctl restart edgefleet-hub.service
fi
