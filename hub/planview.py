"""``edgefleet-hub plan STAGE``: ask the hub for a fleet-wide plan and print it as a
table, as Markdown (a pull-request comment) or as the API's JSON.

Client-side only (argparse and the API client): no server stack is imported.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from hub.apiclient import api_client

HTTP_MARGIN = 15.0
"""Seconds the HTTP call waits beyond the plan's own timeout (the hub answers after it)."""


def _short(sha: str | None) -> str:
    return sha[:10] if sha else "(none)"


def _headline(data: Any) -> str:
    return (
        f"plan of {data['stage']}: {_short(data['from'])} -> {_short(data['to'])}"
        + (f" ({data['ref']})" if data.get("ref") else "")
        + f"; {data['answered']}/{data['asked']} nodes answered"
    )


def show_plan(data: Any) -> str:
    from hub.cli import table  # noqa: PLC0415 - hub.cli imports this module

    parts = [_headline(data)]
    if data["changes"]:
        rows = [
            [c["action"], c["target"], c["subject"], c["nodes"], ", ".join(c["examples"])]
            for c in data["changes"]
        ]
        parts.append(table(["ACTION", "TARGET", "SUBJECT", "NODES", "EXAMPLES"], rows))
    elif data["answered"] > len(data["refused"]):
        parts.append("no changes on the nodes that answered")
    if data["refused"]:
        rows = [[r["node"], r["reason"], r["message"][:120]] for r in data["refused"]]
        parts.append("REFUSED\n" + table(["NODE", "REASON", "MESSAGE"], rows))
    if data["silent"]:
        parts.append(f"silent (no answer in time): {', '.join(data['silent'])}")
    return "\n\n".join(parts)


def _md(text: str) -> str:
    """A table cell: pipes and newlines would break the row."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_plan(data: Any) -> str:
    """The plan as a Markdown comment for a pull request."""
    ref = f" (`{_md(data['ref'])}`)" if data.get("ref") else ""
    lines = [
        f"### edgefleet plan: `{_md(data['stage'])}` {_short(data['from'])} -> "
        f"{_short(data['to'])}{ref}",
        "",
        f"{data['answered']} of {data['asked']} nodes answered.",
        "",
    ]
    if data["changes"]:
        lines += ["| action | target | subject | nodes | examples |", "|---|---|---|---:|---|"]
        lines += [
            f"| {c['action']} | {_md(c['target'])} | `{_md(c['subject'])}` | {c['nodes']} | "
            f"{_md(', '.join(c['examples']))} |"
            for c in data["changes"]
        ]
        lines.append("")
    if data["refused"]:
        lines += ["**Refused**", "", "| node | reason | message |", "|---|---|---|"]
        lines += [
            f"| {_md(r['node'])} | {_md(r['reason'])} | {_md(r['message'][:300])} |"
            for r in data["refused"]
        ]
        lines.append("")
    if data["silent"]:
        lines.append(f"No answer in time: {_md(', '.join(data['silent']))}")
    return "\n".join(lines).rstrip() + "\n"


def _run(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"timeout": args.timeout}
    if args.commit is not None:
        body["commit"] = args.commit
    if args.sample is not None:
        body["sample"] = args.sample
    http = argparse.Namespace(**{**vars(args), "timeout": args.timeout + HTTP_MARGIN})
    stage = urllib.parse.quote(args.stage, safe="")
    data = api_client(http).call("POST", f"/api/v1/stages/{stage}/plan", body=body)
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.markdown:
        print(markdown_plan(data), end="")
    else:
        print(show_plan(data))
    return 1 if data["refused"] else 0


def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "plan",
        parents=[client],
        help="what promoting a stage (or a given commit) would change on its nodes",
        description="Each online node of STAGE dry-runs the candidate (signature, history "
        "policy, desired state, plan) and answers what it would change; nothing is "
        "applied and no branch moves. --timeout is how long nodes may take. Exit 1 if a "
        "node would refuse the candidate.",
    )
    p.add_argument("stage")
    p.add_argument("--commit", metavar="REF",
                   help="a branch, tag, refs/pull/N/head or full commit id "
                   "(default: the head of the stage's promote_from)")  # fmt: skip
    p.add_argument("--sample", metavar="N|P%",
                   help="ask only N nodes (or P percent), the same ones each time")  # fmt: skip
    p.add_argument("--markdown", action="store_true", help="a Markdown table (PR comment)")
    p.set_defaults(func=_run)
