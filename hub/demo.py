"""``edgefleet-hub demo``: a whole local fleet in a temp dir, and a change flowing through it.

It makes an SSH signing key, a fleet Git repository with canary/beta/stable branches, a
mosquitto broker, the hub and several real agents (files target, each with its own
allowed root), then commits a signed change to the first stage and promotes it stage
by stage through the hub, printing what happens. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.errors import HubError

STAGES = ("canary", "beta", "stable")
MOTD_TEMPLATE = "{{ motd.text }}\n(node {{ node }} at desk {{ motd.desk }}, stage {{ branch }})\n"
REQUIRES = '[requires]\nagent = ">= 0.2"  # templates and values: older agents refuse this\n'

NODES = {"canary": 1, "beta": 2, "stable": 3}
GIT_ENV = {
    "GIT_AUTHOR_NAME": "edgefleet demo",
    "GIT_AUTHOR_EMAIL": "demo@edgefleet.invalid",
    "GIT_COMMITTER_NAME": "edgefleet demo",
    "GIT_COMMITTER_EMAIL": "demo@edgefleet.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pick_port(preferred: int, say: Callable[[str], None] = print) -> int:
    """``preferred`` when it is free on 127.0.0.1, else a free port (and say so): a taken
    8080 must not end the demo before it starts."""
    with socket.socket() as s:
        # As the hub's listener does: a port in TIME_WAIT is free, one with a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError as err:
            port = _free_port()
            say(f"==> port {preferred} is not available ({err.strerror}); "
                f"the hub uses port {port} instead")  # fmt: skip
            return port
    return preferred


def _wait_port(port: int, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise HubError(f"demo: {what} did not start listening on 127.0.0.1:{port}")


class DemoInterrupted(Exception):
    """Ctrl-C while the demo was still setting up or waiting."""


@dataclass
class Demo:
    root: Path
    port: int
    say: Callable[[str], None] = print
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)
    """node name -> stage."""
    gate_reason: str = ""
    stopping: bool = False
    """Set by SIGINT/SIGTERM: every wait ends at once."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- building blocks ---------------------------------------------------------

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        env = {**os.environ, **GIT_ENV, "HOME": str(self.root)}
        done = subprocess.run(
            ["git", *args], cwd=cwd or self.root / "work", env=env,
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise HubError(f"demo: git {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def _spawn(self, name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        self.procs.append((name, proc))
        return proc

    def make_key(self) -> Path:
        key = self.root / "signing" / "id_ed25519"
        key.parent.mkdir(parents=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "demo", "-f", str(key)],
            check=True,
        )
        allowed = key.parent / "allowed_signers"
        pub = key.with_suffix(".pub").read_text().strip()
        allowed.write_text(f'demo@edgefleet.invalid namespaces="git" {pub}\n')
        return allowed

    def node_root(self, node: str) -> Path:
        return self.root / "nodes" / node

    def commit(self, message: str, text: str) -> str:
        """A signed commit on canary (the work clone's branch) changing every node's motd.

        The motd is a template rendered on each node: the text is a value shared by all
        (common/values.toml), the desk a per-node value (nodes/<node>/values.toml).
        """
        work = self.root / "work"
        (work / "common").mkdir(exist_ok=True)
        (work / "common/edgefleet.toml").write_text(REQUIRES)
        (work / "common/values.toml").write_text(f"[motd]\ntext = {json.dumps(text)}\n")
        for n, node in enumerate(self.nodes, start=1):
            path = work / "nodes" / node / "files" / str(self.node_root(node) / "etc/motd.j2")[1:]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(MOTD_TEMPLATE)
            (work / "nodes" / node / "values.toml").write_text(f"[motd]\ndesk = {n}\n")
        self._git("add", "-A")
        key = self.root / "signing" / "id_ed25519"
        self._git("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}",
                  "commit", "-q", "-S", "-m", message)  # fmt: skip
        self._git("push", "-q", "origin", "canary")
        return self._git("rev-parse", "HEAD")

    def make_repo(self) -> str:
        bare = self.root / "fleet.git"
        self._git("init", "-q", "--bare", "-b", "canary", str(bare), cwd=self.root)
        self._git("init", "-q", "-b", "canary", str(self.root / "work"), cwd=self.root)
        self._git("remote", "add", "origin", str(bare))
        (self.root / "work" / "README.md").write_text("edgefleet demo fleet\n")
        sha = self.commit("Welcome message v1", "Welcome to the edgefleet demo (v1)")
        for stage in STAGES[1:]:
            self._git("push", "-q", "origin", f"canary:refs/heads/{stage}")
        return sha

    def start_broker(self) -> str:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise HubError("demo: mosquitto is not installed (./dev demo installs it)")
        port = _free_port()
        conf = self.root / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        self._spawn("mosquitto", [binary, "-c", str(conf)], self.root / "mosquitto.log")
        _wait_port(port, "mosquitto")
        return f"mqtt://127.0.0.1:{port}"

    def start_hub(self, mqtt_url: str) -> Path:
        token = self.root / "hub.token"
        token.write_text(os.urandom(16).hex() + "\n")
        token.chmod(0o600)
        stages = []
        for i, stage in enumerate(STAGES):
            lines = [f'[[stages]]\nname = "{stage}"\nbranch = "{stage}"']
            if i:
                lines.append(f'promote_from = "{STAGES[i - 1]}"')
                lines.append("gate = { min_nodes = 1, min_ready_ratio = 1.0, max_failed = 0, "
                             "soak = 3 }")  # fmt: skip
            stages.append("\n".join(lines))
        cfg = self.root / "fleet.toml"
        cfg.write_text(
            f'[hub]\nlisten = "127.0.0.1:{self.port}"\ndatabase = "{self.root}/hub.db"\n'
            f'token_file = "{token}"\nheartbeat = 5\nstale_after = 15\n\n'
            f'[mqtt]\nurl = "{mqtt_url}"\nclient_id = "edgefleet-demo-hub"\n\n'
            f'[git]\nurl = "file://{self.root}/fleet.git"\ninterval = 2\n\n'
            + "\n\n".join(stages)
            + "\n"
        )
        self._spawn("hub", [sys.executable, "-m", "hub.cli", "serve", "--config", str(cfg)],
                    self.root / "hub.log")  # fmt: skip
        _wait_port(self.port, "the hub")
        return cfg

    def start_agent(self, node: str, stage: str, mqtt_url: str, allowed: Path) -> None:
        home = self.root / "agents" / node
        home.mkdir(parents=True)
        self.node_root(node).mkdir(parents=True, exist_ok=True)
        cfg = home / "agent.toml"
        cfg.write_text(
            f'node = "{node}"\nstate_dir = "{home}/state"\n[labels]\nsite = "demo"\n'
            f'[git]\nurl = "file://{self.root}/fleet.git"\nbranch = "{stage}"\n'
            f'paths = ["common", "nodes/{node}"]\ninterval = 60\n'
            f'[trust]\nallowed_signers = "{allowed}"\n'
            f'[mqtt]\nurl = "{mqtt_url}"\nheartbeat = 5\n'
            f'[targets.files]\nallowed_roots = ["{self.node_root(node)}"]\n'
            "[health]\nsettle = 0\n"
        )
        argv = [sys.executable, "-m", "agent.cli", "--config", str(cfg), "run"]
        self._spawn(node, argv, home / "agent.log")

    # -- talking to the hub --------------------------------------------------------

    def api(self, path: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
        token = (self.root / "hub.token").read_text().strip()
        req = urllib.request.Request(  # noqa: S310 - http:// to our own hub
            self.url + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own hub
            return json.loads(resp.read())

    def wait_for(self, what: str, done: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.stopping:
                raise DemoInterrupted
            self.check_alive()
            try:
                if done():
                    return
            except urllib.error.HTTPError as err:
                last = f"; last answer: HTTP {err.code} {err.read()[:300]!r}"
            except (urllib.error.URLError, OSError, ValueError) as err:
                last = f"; last error: {err}"
            time.sleep(0.3)
        raise HubError(f"demo: timed out waiting for {what}{last} (logs in {self.root})")

    def applied_on(self, stage: str, commit: str) -> int:
        nodes = self.api(f"/api/v1/nodes?stage={stage}")["nodes"]
        return sum(1 for n in nodes if n["applied"] == commit and n["state"] == "synced")

    def _all_applied(self, stage: str, commit: str) -> Callable[[], bool]:
        return lambda: self.applied_on(stage, commit) == NODES[stage]

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise HubError(f"demo: {name} exited with code {proc.returncode}; "
                               f"see its log under {self.root}")  # fmt: skip

    def print_summary(self) -> None:
        summary = self.api("/api/v1/summary")
        parts = []
        for name, stage in summary["stages"].items():
            states = ", ".join(f"{n} {s}" for s, n in stage["states"].items() if n)
            parts.append(f"{name}: {(stage.get('head') or '-')[:8]} [{states or 'no nodes'}]")
        self.say("    " + " | ".join(parts))

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    # -- the story -----------------------------------------------------------------

    def run(self) -> str:
        self.nodes = {f"{stage}-{i + 1}": stage for stage in STAGES for i in range(NODES[stage])}
        self.say(f"==> demo fleet in {self.root}")
        allowed = self.make_key()
        v1 = self.make_repo()
        self.say(f"    fleet repository with branches {', '.join(STAGES)} at {v1[:8]} (signed)")
        mqtt_url = self.start_broker()
        self.say(f"    mosquitto on {mqtt_url}")
        self.start_hub(mqtt_url)
        self.say(f"    hub on {self.url}")
        for node, stage in self.nodes.items():
            self.start_agent(node, stage, mqtt_url, allowed)
        self.say(f"    {len(self.nodes)} agents: {', '.join(self.nodes)}")
        self.wait_for(
            "every agent to report v1",
            lambda: all(self.applied_on(s, v1) == NODES[s] for s in STAGES),
        )
        self.say("==> every node applied v1")
        self.print_summary()

        v2 = self.commit("Welcome message v2", "Welcome to the edgefleet demo (v2)")
        self.say(f"==> committed v2 {v2[:8]} to canary; the hub notifies canary agents")
        self.wait_for("canary to apply v2", lambda: self.applied_on("canary", v2) == 1)
        self.print_summary()
        for source, stage in itertools.pairwise(STAGES):
            self.say(f"==> promoting {source} -> {stage} (health gate, then fast-forward)")
            self.promote(stage)
            self.wait_for(f"{stage} to apply v2", self._all_applied(stage, v2))
            self.print_summary()
        motd = self.node_root("stable-1") / "etc/motd"
        self.say(f"==> v2 is live everywhere: {motd} says {motd.read_text().splitlines()[0]!r}")
        self.say(f"==> dashboard: {self.url}/   (API {self.url}/api/v1/summary)")
        return v2

    def promote(self, stage: str) -> None:
        """Through the hub's promotion API once its gate opens (soak included)."""

        def attempt() -> bool:
            try:
                self.api(f"/api/v1/stages/{stage}/promote", method="POST", body={"reason": "demo"})
            except urllib.error.HTTPError as err:
                if err.code != 409:  # 409: gate still closed (soak): try again shortly
                    raise
                self.gate_reason = json.loads(err.read()).get("error", "")
                return False
            return True

        self.wait_for(f"the {stage} gate to open", attempt)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run a local demo fleet: Git repo, broker, hub and agents, and promote a change",
        description=__doc__,
    )
    p.add_argument("--port", type=int, default=8080, help="hub API/dashboard port (default 8080)")
    p.add_argument("--dir", type=Path, help="work directory (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory at exit")
    p.add_argument("--exit-after", type=float, metavar="SECONDS",
                   help="stop this long after the change reached every stage "
                        "(default: run until Ctrl-C)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = args.dir or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(root=root, port=pick_port(args.port))

    def on_signal(_sig: int, _frame: object) -> None:
        demo.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        demo.run()
        print("==> running; Ctrl-C stops everything" if args.exit_after is None
              else f"==> stopping in {args.exit_after:g} s")  # fmt: skip
        deadline = None if args.exit_after is None else time.monotonic() + args.exit_after
        while not demo.stopping and (deadline is None or time.monotonic() < deadline):
            demo.check_alive()
            time.sleep(0.2)
    except DemoInterrupted:
        print("==> interrupted")
    finally:
        print("==> stopping agents, hub and broker")
        demo.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0
