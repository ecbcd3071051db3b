"""``edgefleet-agent``: run the agent, sync once, show local status, verify setup.

Exit codes: 0 success (node synced), 1 the node did not end synced or a check failed,
2 the configuration is unusable (nothing was applied).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig, load_config
from agent.errors import ConfigError, EdgefleetError
from agent.inhibit import NAME_RE, remove_lock, scan, write_lock
from agent.roots import prepare_roots
from agent.state import StateStore, iter_owned
from common.durations import DurationError, parse_duration

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
REPORT_GRACE = 5.0
DRY_RUN_FAILED = ("refused", "failed", "error")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgefleet-agent",
        description="Pull this node's branch/paths from Git and reconcile files, "
        "systemd units and k3s manifests; report over MQTT.",
    )
    p.add_argument("--version", action="version", version=f"edgefleet-agent {__version__}")
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"agent config file (default: {DEFAULT_CONFIG_PATH})",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # The same options after the command (`sync --once --config x`); SUPPRESS keeps a
    # value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"agent config file (default: {DEFAULT_CONFIG_PATH})",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        # The one-line summary is also the command's own --help description.
        return sub.add_parser(name, parents=[common], help=text, description=text)

    command("run", "run as a daemon: poll Git, reconcile, correct drift, report (until SIGTERM)")
    s = command(
        "sync", "one full reconcile, then one drift check; exit 0 when the node ends synced"
    )
    s.add_argument("--once", action="store_true", help="run once and exit (the default)")
    s.add_argument(
        "--dry-run",
        action="store_true",
        help="print the ChangeSet of the remote head, apply nothing; exit 1 if the node "
        "would refuse it",
    )
    st = command("status", "show this node's local state (no network)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    command(
        "verify",
        "check config, Git access, rendering and the signature of the current head "
        "(sync --dry-run also checks where files would land)",
    )
    command(
        "keygen",
        "create this node's age identity ([secrets] identity) if missing; print its recipient",
    )
    command(
        "prepare-roots", "create missing allowed roots (0755) before the unit's sandbox needs them"
    )
    i = command(
        "inhibit", "hold back updates with a lock (--reason), lift it (--release), or list locks"
    )
    what = i.add_mutually_exclusive_group()
    what.add_argument("--reason", help="why updates must wait (shown on the hub)")
    what.add_argument("--release", action="store_true", help="remove the lock --name")
    i.add_argument("--name", default="manual", help="lock name (default: manual)")
    i.add_argument(
        "--ttl",
        type=_duration,
        help='how long the lock holds, e.g. 600 or "2h" (capped by max_ttl)',
    )
    i.add_argument("--persistent", action="store_true", help="keep the lock across reboots")
    return p


def _duration(text: str) -> float:
    try:
        value = parse_duration(float(text) if text.replace(".", "", 1).isdigit() else text)
    except DurationError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration")
    return value


def _setup_logging(verbose: bool) -> None:
    # Under systemd the journal adds timestamps itself.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt)
    for noisy in ("dulwich", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _print_changes(outcome: Any) -> None:
    for plan in outcome.changes.values():
        for line in plan.lines():
            print(f"  {line}")
        print(f"  = {plan.summary()}")


async def _sync(cfg: AgentConfig, dry_run: bool) -> int:
    from agent.service import Agent  # noqa: PLC0415 - keeps `status` fast and light

    agent = Agent(cfg, with_reporter=not dry_run)
    try:
        await agent.start_reporting()
        outcome = await agent.sync_once(dry_run=dry_run)
        print(f"{outcome.state}: {outcome.message}" if outcome.message else outcome.state)
        _print_changes(outcome)
        for item in agent.reconciler.drift:
            print(f"  drift {item['kind']:<9} {item['target']}:{item['subject']} {item['detail']}")
        if dry_run:
            # A commit this node would refuse (or could not read) fails the check, so a
            # dry run can gate a change in CI.
            return EXIT_FAILED if outcome.state in DRY_RUN_FAILED else EXIT_OK
        return EXIT_OK if outcome.state == "synced" else EXIT_FAILED
    finally:
        if agent.reporter is not None:
            # A one-shot run must get its status out: give a slow broker a few seconds.
            await agent.reporter.wait_connected(REPORT_GRACE)
        await agent.close()


def _status(cfg: AgentConfig, as_json: bool) -> int:
    state = StateStore(cfg.state_dir).load()
    doc = {
        "node": cfg.node,
        "branch": cfg.git.branch,
        "paths": list(cfg.git.paths),
        "applied": state.applied,
        "last_good": state.last_good,
        "last_attempted": state.last_attempted,
        "interrupted_apply": state.applying,
        "bad_commits": state.bad,
        "resources": state.counts(),
        "inventory": [
            {"target": t, "subject": s, "digest": o.digest, "commit": o.commit}
            for t, s, o in iter_owned(state)
        ],
    }
    if as_json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(f"node       {cfg.node}")
    print(f"branch     {cfg.git.branch}  paths {', '.join(cfg.git.paths)}")
    print(f"applied    {state.applied or '-'}")
    print(f"last good  {state.last_good or '-'}")
    if state.applying:
        print(f"interrupted apply of {state.applying} (resumes on next sync)")
    if state.bad:
        print(f"bad        {', '.join(c[:12] for c in state.bad)}")
    for target, count in state.counts().items():
        print(f"{target:<10} {count} object(s)")
    return EXIT_OK


def _keygen(cfg: AgentConfig) -> int:
    from agent.render.keys import IdentityError, ensure_identity  # noqa: PLC0415 - pyrage

    try:
        public, created = ensure_identity(cfg.secrets.identity)
    except IdentityError as err:
        print(f"edgefleet-agent: {err}", file=sys.stderr)
        return EXIT_FAILED
    if created:
        print(f"created age identity {cfg.secrets.identity}", file=sys.stderr)
    print(public)
    return EXIT_OK


def _prepare_roots(cfg: AgentConfig) -> int:
    for path in prepare_roots(cfg.path, cfg.targets.files.allowed_roots):
        print(f"created {path}")
    return EXIT_OK


def _when(ts: float) -> str:
    return "never" if math.isinf(ts) else time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _inhibit(cfg: AgentConfig, args: argparse.Namespace) -> int:
    act = cfg.activation
    dirs = (act.inhibit_dir, act.persistent_inhibit_dir)
    if not NAME_RE.match(args.name):
        print(f"edgefleet-agent: --name {args.name!r}: use letters, digits, '.', '_', '-'",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    if args.reason is None and not args.release and (args.ttl or args.persistent):
        # Without --reason this would only list the locks and silently take no lock.
        print("edgefleet-agent: --ttl and --persistent need --reason (to take a lock)",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    if args.release:
        # The daemon notices within [activation] poll seconds (it looks while deferred).
        removed = remove_lock(dirs, args.name)
        for path in removed:
            print(f"released {args.name} ({path})")
        if not removed:
            print(f"no lock named {args.name} in {dirs[0]} or {dirs[1]}", file=sys.stderr)
        return EXIT_OK if removed else EXIT_FAILED
    if args.reason is not None:
        if not args.reason.strip():
            print("edgefleet-agent: --reason must not be empty", file=sys.stderr)
            return EXIT_CONFIG
        ttl = min(args.ttl or act.max_ttl, act.max_ttl)
        directory = act.persistent_inhibit_dir if args.persistent else act.inhibit_dir
        path = write_lock(directory, args.name, args.reason.strip(), time.time() + ttl)
        print(f"locked: {args.reason.strip()} ({args.name}) until {_when(time.time() + ttl)}")
        print(f"  {path}")
        return EXIT_OK
    now = time.time()
    locks = scan(dirs, act.max_ttl)
    for lock in locks:
        state = "active" if lock.expires > now else "expired"
        print(f"{state:<8} {lock.describe()} until {_when(lock.expires)}  {lock.path}")
    if not locks:
        print("no update locks")
    return EXIT_OK


async def _verify(cfg: AgentConfig) -> int:
    from agent.render.source import NodeFacts, RenderingSource  # noqa: PLC0415
    from agent.signcheck import SignatureChecker  # noqa: PLC0415
    from agent.source import GitSource  # noqa: PLC0415

    print(f"config     {cfg.path}: ok (node {cfg.node}, branch {cfg.git.branch})")
    # A scratch cache: verify must not touch the running daemon's Git cache.
    scratch = tempfile.TemporaryDirectory(prefix="edgefleet-verify-")
    source = GitSource(cfg.git, Path(scratch.name), cfg.targets.files)
    try:
        head = await source.remote_head()
        print(f"git        {cfg.git.url}: {cfg.git.branch} is at {head}")
        await source.fetch(head)
        # Rendered as the daemon would: templates and secrets must work on this node.
        rendering = RenderingSource(source, NodeFacts.of(cfg))
        desired = await asyncio.to_thread(rendering.read_desired, head)
        print(f"paths      {len(desired.files)} file(s) in {', '.join(cfg.git.paths)}")
        payload, signature = await asyncio.to_thread(source.signed_payload, head)
        signer = await SignatureChecker(cfg.trust).verify(head, payload, signature)
        verdict = f"signed by {signer}" if signer else "accepted (require_signed = false)"
        print(f"signature  {verdict}")
    except EdgefleetError as err:
        print(f"FAILED     {err}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        source.close()
        scratch.cleanup()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        print(f"edgefleet-agent: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.command == "run":
            from agent.service import run_forever  # noqa: PLC0415

            asyncio.run(run_forever(cfg))
            return EXIT_OK
        if args.command == "sync":
            return asyncio.run(_sync(cfg, args.dry_run))
        if args.command == "status":
            return _status(cfg, args.json)
        if args.command == "keygen":
            return _keygen(cfg)
        if args.command == "prepare-roots":
            return _prepare_roots(cfg)
        if args.command == "inhibit":
            return _inhibit(cfg, args)
        return asyncio.run(_verify(cfg))
    except ConfigError as err:  # e.g. a malformed allowed_signers file
        print(f"edgefleet-agent: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except EdgefleetError as err:
        print(f"edgefleet-agent: {err}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:  # e.g. an inhibit dir this user may not write
        print(f"edgefleet-agent: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
