#!/bin/sh
# Plain install for distributions without dpkg: a private venv under /opt/edgefleet, the
# systemd units, the hub's system user, /etc/edgefleet and /var/lib/edgefleet.
# Like the .deb it neither enables nor starts anything while /etc/edgefleet/agent.toml
# is missing. Run again to upgrade (config and state are kept).
#
# usage: packaging/install.sh [--uninstall [--purge]]
# env:   PYTHON (default python3, >= 3.11), EDGEFLEET_EXTRAS (default k3s)
set -eu

src=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/edgefleet
units=/etc/systemd/system
python=${PYTHON:-python3}
extras=${EDGEFLEET_EXTRAS-k3s}
booted() { [ -d /run/systemd/system ]; }

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root" >&2
    exit 1
fi

if [ "${1:-}" = --uninstall ]; then
    if booted; then
        systemctl disable --now edgefleet-agent.service edgefleet-hub.service 2>/dev/null || true
    fi
    rm -rf "$prefix" "$units/edgefleet-agent.service" "$units/edgefleet-hub.service" \
        /usr/local/bin/edgefleet-agent /usr/local/bin/edgefleet-hub
    if [ "${2:-}" = --purge ]; then
        rm -rf /etc/edgefleet /var/lib/edgefleet /var/lib/edgefleet-hub
    fi
    if booted; then systemctl daemon-reload; fi
    exit 0
fi

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install.sh: $python is older than 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 1
}

# Build the new venv beside the old one and swap, so a failed pip leaves the old install.
rm -rf "$prefix/venv.new"
mkdir -p "$prefix/bin"
"$python" -m venv "$prefix/venv.new"
"$prefix/venv.new/bin/pip" install --quiet --disable-pip-version-check "$src${extras:+[$extras]}"
# The venv's scripts name their interpreter by path: rewrite venv.new -> venv.
grep -rlI -F "$prefix/venv.new" "$prefix/venv.new/bin" "$prefix/venv.new/pyvenv.cfg" |
    xargs sed -i "s|$prefix/venv.new|$prefix/venv|g"
if booted; then systemctl stop edgefleet-agent.service edgefleet-hub.service 2>/dev/null || true; fi
rm -rf "$prefix/venv"
mv "$prefix/venv.new" "$prefix/venv"
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
elif ! id edgefleet-hub >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/edgefleet-hub \
        --shell /usr/sbin/nologin edgefleet-hub
fi

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
