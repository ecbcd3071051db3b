"""Fuzzing what the agent reads from the fleet repository: edgefleet.toml options and
Kubernetes manifests (YAML with anchors, aliases, tags, many documents).

Property: the parser returns its result or raises the agent's refusal (SourceError for
options, PlanError for manifests), never another exception; a parsed manifest is JSON
the API server takes (its digest and body can be computed).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent.desired import DesiredFile, parse_options
from agent.errors import PlanError, SourceError
from agent.k8s import manifests as mf
from tests.testbed.fuzzing import fuzz, mutated

# -- edgefleet.toml -------------------------------------------------------------------

OPTIONS = {
    "units": {"app.service": {"state": "started", "enable": True, "restart_on": ["/etc/app/*"],
                              "reload_on": ["/etc/app/reload"]},
              "db.service": {"state": "stopped"}},
    "health": {"timeout": "30s", "http": [{"url": "http://127.0.0.1:8080/h", "status": 200,
                                          "timeout": "5s"}]},
}  # fmt: skip


def toml_value(value: Any) -> str:
    """``value`` as inline TOML (what tomllib reads back as ``value``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value) if abs(value) < 10**300 else "0x" + "f" * 4000
    if isinstance(value, str):
        # a lone surrogate has no TOML form: written as "?", as by a UTF-8 editor
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "replace").decode()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    pairs = (f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
    return "{" + ", ".join(pairs) + "}"


@st.composite
def option_files(draw: st.DrawFn) -> bytes:
    doc = draw(mutated(OPTIONS))
    text = "\n".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items())
    data = text.encode("utf-8", "replace")
    cut = draw(st.sampled_from((len(data), len(data), len(data) // 2)))
    return data[:cut] + draw(st.sampled_from((b"", b"\n[units]", b"\xff", b"\nx = [" * 2000)))


def test_valid_options_parse() -> None:
    """The mutations start from a valid document (else they would only test refusals)."""
    parsed = parse_options("common", "\n".join(
        f"{json.dumps(k)} = {toml_value(v)}" for k, v in OPTIONS.items()).encode())  # fmt: skip
    assert set(parsed.units) == {"app.service", "db.service"} and parsed.http_checks


@fuzz(2000)
@given(option_files())
def test_options_parse_or_are_refused(raw: bytes) -> None:
    try:
        parse_options("common", raw)
    except SourceError as err:
        assert str(err).startswith("common/edgefleet.toml: ")


# -- manifests ------------------------------------------------------------------------

# Lines a manifest may hold, good and bad: anchors and aliases (merge keys, repeats,
# billion laughs, an alias to its own container), tags, dates, documents, odd scalars.
LINES = (
    "apiVersion: v1", "kind: ConfigMap", "kind: List", "kind: Namespace", "metadata:",
    "  name: app", "  name: &n app", "  namespace: default", "  namespace: 7", "  labels: *l",
    "  labels: &l {a: b}", "data:", "data: &d {k: v}", "data: *d", "  <<: *d", "  k: v",
    "  when: 2024-01-01", "  at: 2024-01-01T10:00:00Z", "  bad: 2024-13-45", "  ratio: .nan",
    "  big: .inf", "  n: 0x" + "f" * 4000, "  m: " + "9" * 5000, "  on: yes", "  ? [a, b]",
    "  : c", "  1: one", "  bin: !!binary aGVsbG8=", "  set: !!set {a, b}",
    "  py: !!python/object:os.system", "  s: !!str 1", "  f: !!float abc", "  i: !!int x",
    "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]", "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]",
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]", "d: [*c, *c, *c, *c, *c, *c, *c, *c, *c]",
    "e: &e [*e]", "f: *undefined", "---", "...", "--- !!map", "%YAML 1.1", "- item",
    "\t tab: x", "[" * 2000, "{" * 50, "'unterminated", '"\\ud800"', "key: \u00e9\U0001f600",
)  # fmt: skip
GOOD_MANIFEST = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  k: v\n"


@st.composite
def manifest_files(draw: st.DrawFn) -> dict[str, DesiredFile]:
    files = {}
    for i in range(draw(st.integers(1, 3))):
        lines = draw(st.lists(st.sampled_from(LINES) | st.text(max_size=12), max_size=12))
        text = draw(st.sampled_from(("", GOOD_MANIFEST, GOOD_MANIFEST + "---\n"))) + "\n".join(
            lines
        )
        data = text.encode("utf-8", "surrogatepass")
        name = draw(st.sampled_from((f"m{i}.yaml", f"m{i}.yml", f"m{i}.json")))
        files[name] = DesiredFile(name, data, 0o100644, "common")
    return files


def test_good_manifest_parses() -> None:
    data = GOOD_MANIFEST.encode()
    [m] = mf.parse({"a.yaml": DesiredFile("a.yaml", data, 0o100644, "common")})
    assert (m.kind, m.name) == ("ConfigMap", "app")


@fuzz(1500)
@given(manifest_files())
def test_manifests_parse_or_are_refused(files: dict[str, DesiredFile]) -> None:
    try:
        parsed = mf.parse(files)
    except PlanError as err:
        assert str(err).startswith("manifests/")
        return
    for m in parsed:
        body = mf.desired_body(m, m.namespace, "pi-01", "c" * 40)
        mf.body_digest(body)
        assert json.loads(json.dumps(body, allow_nan=False)) == body
