"""``edgefleet-hub``: run the hub (``serve``) or query a running one.

Client commands find the API from ``--config`` ([hub] listen and token_file) or from
``--url`` / ``--token-file``. Output is a readable table, or the API's JSON with
``--json``. Exit codes: 0 ok, 1 the API is unreachable or answered with an error,
2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
import json
import logging
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hub import demo, planview, recipients
from hub.apiclient import api_client
from hub.config import DEFAULT_CONFIG_PATH, HubConfig, load_config
from hub.enroll import options as enroll
from hub.errors import ApiClientError, ConfigError, HubError
from hub.states import ALL_STATES
from hub.tokencmd import add_parser as add_token_parser

log = logging.getLogger("hub")


# -- output ------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[["-" if v is None else str(v) for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    delta = max(time.time() - ts, 0.0)
    if delta < 120:
        return f"{delta:.0f}s ago"
    if delta < 7200:
        return f"{delta / 60:.0f}m ago"
    return f"{delta / 3600:.1f}h ago"


def _short(sha: str | None) -> str | None:
    return sha[:10] if sha else None


def show_status(data: Any) -> str:
    states = data["states"]
    head = f"nodes: {data['nodes']}   healthy (synced): {states.get('synced', 0)}"
    stage_rows = [
        [name, s["branch"], _short(s["head"]), s["nodes"], *(s["states"][k] for k in ALL_STATES)]
        for name, s in data["stages"].items()
    ]
    if data.get("unstaged", {}).get("nodes"):
        u = data["unstaged"]
        stage_rows.append(["(none)", None, None, u["nodes"], *(u["states"][k] for k in ALL_STATES)])
    totals = ["total", None, None, data["nodes"], *(states[k] for k in ALL_STATES)]
    return (
        head
        + "\n\n"
        + table(
            ["STAGE", "BRANCH", "HEAD", "NODES", *(k.upper() for k in ALL_STATES)],
            [*stage_rows, totals],
        )
    )


def show_nodes(data: Any, version: bool = False) -> str:
    rows = [
        [n["node"], n["stage"], n["state"], _short(n["applied"]), _short(n["desired"]),
         n["drift_count"], _ago(n["last_heard"]), *([n.get("version")] if version else [])]
        for n in data["nodes"]
    ]  # fmt: skip
    shown = f"{len(rows)} of {data['total']} nodes"
    if data["offset"]:
        shown += f" (from offset {data['offset']})"
    head = ["NODE", "STAGE", "STATE", "APPLIED", "DESIRED", "DRIFT", "LAST HEARD"]
    return table([*head, *(["VERSION"] if version else [])], rows) + f"\n\n{shown}"


def show_drift(data: Any) -> str:
    if not data["drift"]:
        return "no drift reported"
    rows = [
        [d["target"], d["subject"], d["kind"], d["nodes"],
         ", ".join(f"{k or '(none)'}={v}" for k, v in sorted(d["by_stage"].items())),
         ", ".join(d["examples"])]
        for d in data["drift"]
    ]  # fmt: skip
    return table(["TARGET", "SUBJECT", "KIND", "NODES", "BY STAGE", "EXAMPLES"], rows)


def show_events(data: Any) -> str:
    if not data["events"]:
        return "no events"
    rows = [
        [time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"] or e["received"])),
         e["node"], e["seq"], e["type"], _short(e["commit"]),
         json.dumps(e["details"], separators=(",", ":"))[:60]]
        for e in data["events"]
    ]  # fmt: skip
    return table(["AT", "NODE", "SEQ", "TYPE", "COMMIT", "DETAILS"], rows)


def _gate_text(stage: Any) -> str:
    if stage.get("paused"):
        p = stage["paused"]
        return f"PAUSED ({p['kind']} by {p['who']}): {p['reason']}"
    gate = stage.get("gate_status")
    if gate is None:
        return "-"
    if gate.get("up_to_date"):
        return "up to date"
    text = ("OPEN: " if gate["open"] else "closed: ") + gate["reason"]
    blocked = stage.get("blocked")
    return f"{text}; {blocked}" if blocked and not gate["open"] else text


def show_stages(data: Any) -> str:
    rows = [
        [s["name"], s["branch"], _short(s["head"]), s["promote_from"], "yes" if s["auto"] else "no",
         s["nodes"], s["states"]["synced"],
         s["nodes"] - s["states"]["synced"], _gate_text(s)]
        for s in data["stages"]
    ]  # fmt: skip
    return table(
        ["STAGE", "BRANCH", "HEAD", "FROM", "AUTO", "NODES", "SYNCED", "NOT SYNCED", "GATE"], rows
    ) + "".join(_wave_lines(s) for s in data["stages"] if s.get("waves"))


def _wave_lines(stage: Any) -> str:
    """Per wave of a stage: nodes on the candidate / total, state, gate and soak left."""
    return f"\n{stage['name']} waves:" + "".join(
        f"\n  {w['name']}: {w['on_candidate']}/{w['nodes']} on candidate, {w['state']}"
        + (f"; {w['gate']}" if w["gate"] else "")
        for w in stage["waves"]
    )


def show_history(data: Any) -> str:
    if not data["history"]:
        return "no rollout history"
    rows = [
        [time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["at"])), h["stage"], h["action"],
         h["outcome"] + (" (forced)" if h["forced"] else ""),
         h["who"] + (f" for {h['on_behalf']}" if h.get("on_behalf") else ""), _short(h["from"]),
         _short(h["to"]), h["reason"][:80]]
        for h in data["history"]
    ]  # fmt: skip
    return table(["AT", "STAGE", "ACTION", "OUTCOME", "WHO", "FROM", "TO", "REASON"], rows)


def show_action(data: Any) -> str:
    if "resumed" in data:
        return f"{data['stage']}: resumed (was paused: {data['was']['reason']})"
    move = f"{data['stage']}: {_short(data['from'])} -> {_short(data['to'])}"
    if "gate" in data:
        return f"promoted {move}" + (" (forced)" if data["forced"] else "")
    return f"rolled back {move}; automatic promotion into it paused until resume"


# -- commands ----------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    # The server stack (aiohttp, aiosqlite, paho) only for serve: client commands stay light.
    from hub.service import serve  # noqa: PLC0415

    cfg: HubConfig = load_config(args.config or DEFAULT_CONFIG_PATH)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop)

    asyncio.run(main())
    return 0


def _query(
    path: str, render: Callable[[Any], str], params: Callable[[argparse.Namespace], list[Any]]
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        data = api_client(args).call("GET", path, params(args))
        print(json.dumps(data, indent=2) if args.json else render(data))
        return 0

    return run


def _action(
    verb: str, body: Callable[[argparse.Namespace], dict[str, Any]]
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        stage = urllib.parse.quote(args.stage, safe="")
        payload = {**body(args), "who": f"cli:{_user()}"}
        data = api_client(args).call("POST", f"/api/v1/stages/{stage}/{verb}", body=payload)
        print(json.dumps(data, indent=2) if args.json else show_action(data))
        return 0

    return run


def cmd_sync(args: argparse.Namespace) -> int:
    node = urllib.parse.quote(args.node, safe="")
    body = {"who": f"cli:{_user()}", **({"override": args.override} if args.override else {})}
    data = api_client(args).call("POST", f"/api/v1/nodes/{node}/sync", body=body)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        how = f" (override: {data['override']})" if "override" in data else ""
        print(f"sync requested from {data['node']}{how}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    node = urllib.parse.quote(args.node, safe="")
    body = {"reason": args.reason, "who": f"cli:{_user()}"}
    data = api_client(args).call("DELETE", f"/api/v1/nodes/{node}", body=body)
    print(json.dumps(data, indent=2) if args.json else f"forgot {data['node']} (events kept)")
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def _opt(**pairs: Any) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in pairs.items() if v is not None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet-hub",
        description="Fleet hub: ingest agent reports, serve the fleet API and dashboard.",
    )
    config_help = (
        f"fleet.toml (default {DEFAULT_CONFIG_PATH}); client commands take the API address"
        " and token from it"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--config", type=Path, help=config_help)
    # The same options after the command; SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging")  # fmt: skip
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="run the hub (MQTT ingest, API, dashboard)")
    p.set_defaults(func=cmd_serve)

    client = argparse.ArgumentParser(add_help=False, parents=[common])
    group = client.add_argument_group("hub API")
    group.add_argument("--url", help="hub API base URL, e.g. http://127.0.0.1:8080")
    group.add_argument("--token-file", type=Path, help="file holding the API bearer token")
    group.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    group.add_argument("--json", action="store_true", help="print the API's JSON answer")

    p = sub.add_parser("status", parents=[client], help="fleet summary by stage and state")
    p.set_defaults(func=_query("/api/v1/summary", show_status, lambda a: []))

    p = sub.add_parser("nodes", parents=[client], help="list nodes with filters")
    p.add_argument("--stage", help="only nodes of this stage")
    p.add_argument("--state", choices=ALL_STATES, help="only nodes in this effective state")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="only nodes with this label (repeatable)")  # fmt: skip
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--offset", type=int, default=0, help="skip this many (paging)")
    p.add_argument("--version", dest="with_version", action="store_true",
                   help="add a column with each node's agent version")  # fmt: skip
    p.set_defaults(
        func=lambda args: _query(
            "/api/v1/nodes",
            functools.partial(show_nodes, version=args.with_version),
            lambda a: [*_opt(stage=a.stage, state=a.state, limit=a.limit, offset=a.offset),
                       *(("label", v) for v in a.label)],
        )(args)
    )  # fmt: skip

    p = sub.add_parser("drift", parents=[client], help="drift grouped by resource across nodes")
    p.add_argument("--stage", help="only drift on nodes of this stage")
    p.set_defaults(func=_query("/api/v1/drift", show_drift, lambda a: _opt(stage=a.stage)))

    p = sub.add_parser("events", parents=[client], help="recent node events, newest first")
    p.add_argument("--node", help="only events of this node")
    p.add_argument("--type", help="only events of this type (e.g. applied, rollback)")
    p.add_argument("--since", type=float, help="only events at or after this Unix time")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.set_defaults(
        func=_query(
            "/api/v1/events",
            show_events,
            lambda a: _opt(node=a.node, type=a.type, since=a.since, limit=a.limit),
        )
    )

    p = sub.add_parser("stages", parents=[client], help="stages, their heads and gates")
    p.set_defaults(func=_query("/api/v1/stages", show_stages, lambda a: []))

    p = sub.add_parser("promote", parents=[client], help="promote a stage to its source's head")
    p.add_argument("stage")
    p.add_argument("--force", action="store_true",
                   help="skip the gate, pause and window checks (audited as forced)")  # fmt: skip
    p.add_argument("--reason", default="manual promotion", help="recorded in the audit log")
    p.set_defaults(func=_action("promote", lambda a: {"force": a.force, "reason": a.reason}))

    p = sub.add_parser("rollback", parents=[client], help="move a stage back and pause it")
    p.add_argument("stage")
    p.add_argument("--to", metavar="COMMIT", help="full commit id (default: previous commit)")
    p.add_argument("--reason", default="manual rollback", help="recorded in the audit log")
    p.set_defaults(
        func=_action("rollback", lambda a: {"reason": a.reason, **({"to": a.to} if a.to else {})})
    )

    p = sub.add_parser("resume", parents=[client], help="lift a halt or rollback pause")
    p.add_argument("stage")
    p.add_argument("--reason", default="manual resume", help="recorded in the audit log")
    p.set_defaults(func=_action("resume", lambda a: {"reason": a.reason}))

    p = sub.add_parser("sync", parents=[client], help="ask a node to reconcile now")
    p.add_argument("node")
    p.add_argument("--override", metavar="REASON",
                   help="apply now despite the node's locks and window (audited)")  # fmt: skip
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("forget", parents=[client], help="remove a node from the hub (audited)")
    p.add_argument("node")
    p.add_argument("--reason", default="forgotten", help="recorded in the audit log")
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("history", parents=[client], help="rollout audit log, newest first")
    p.add_argument("--stage", help="only this stage")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.set_defaults(
        func=_query("/api/v1/history", show_history, lambda a: _opt(stage=a.stage, limit=a.limit))
    )

    planview.add_parser(sub, client)
    demo.add_parser(sub)
    add_token_parser(sub)
    enroll.add_parser(sub, common)
    recipients.add_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"edgefleet-hub: configuration error: {err}", file=sys.stderr)
        return 2
    except ApiClientError as err:
        print(f"edgefleet-hub: {err}", file=sys.stderr)
        return 1
    except HubError as err:
        print(f"edgefleet-hub: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"edgefleet-hub: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
