"""Pure logic of agent.render: values merging, [requires], the engine's verdicts, digests,
and age interop in the direction the pipeline test does not cover (pyrage -> age CLI)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyrage
import pytest

from agent.desired import DesiredFile
from agent.errors import SourceError, StateError
from agent.render import engine, keys
from agent.render.requires import check_requires
from agent.render.seal import ContentSeal
from agent.render.values import MergeError, merge


def test_merge_is_deep_and_later_wins() -> None:
    merged = merge(
        [
            ("a/values.toml", {"app": {"port": 1, "tls": {"on": False}}, "list": [1]}),
            ("b/values.toml", {"app": {"tls": {"on": True}}, "list": [2], "x": "y"}),
        ]
    )
    assert merged == {"app": {"port": 1, "tls": {"on": True}}, "list": [2], "x": "y"}


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        ({"app": {"port": 1}}, {"app": "x"}, "'app' is a table in a/v but a string in b/v"),
        (
            {"app": {"db": {"x": 1}}},
            {"app": {"db": [1]}},
            "'app.db' is a table in a/v but an array",
        ),
        ({"app": 1}, {"app": {"port": 1}}, "'app' is an integer in a/v but a table in b/v"),
    ],
)
def test_merge_type_clash_names_both_files_and_the_key(
    first: dict[str, Any], second: dict[str, Any], message: str
) -> None:
    with pytest.raises(MergeError, match=message):
        merge([("a/v", first), ("b/v", second)])


@pytest.mark.parametrize(
    ("spec", "ok"),
    [(">= 0.2", True), (">=0.2, <1", True), ("> 0.2", False), ("== 0.2", True), ("< 0.2", False)],
)
def test_requires_compares_the_agent_version(spec: str, ok: bool) -> None:
    if ok:
        check_requires("common", {"agent": spec}, version="0.2.0")
    else:
        with pytest.raises(SourceError, match="needs edgefleet-agent"):
            check_requires("common", {"agent": spec}, version="0.2.0")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("0.2", "must be a table"),
        ({"agent": "0.2"}, "is not a specifier"),
        ({"agent": ""}, "must be a version specifier"),
        ({"hub": ">= 1"}, r"requires\.hub: unknown key"),
    ],
)
def test_requires_malformed_is_refused(raw: object, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        check_requires("common", raw)


def request(tmp_path: Path, templates: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "op": "render",
        "node": "n1",
        "labels": {"site": "berlin"},
        "branch": "stable",
        "commit": "c" * 40,
        "identity": str(tmp_path / "age.key"),
        "max_file_size": 1000,
        "max_total_size": 1500,
        "layers": [{"origin": "common", "values": None, "secrets": None}],
        "templates": [
            {"path": p, "origin": "common", "data": base64.b64encode(t.encode()).decode()}
            for p, t in templates.items()
        ],
        "encrypted": [],
        **extra,
    }


def rendered(answer: dict[str, Any]) -> dict[str, str]:
    assert "error" not in answer, answer
    return {f["path"]: base64.b64decode(f["data"]).decode() for f in answer["files"]}


def test_engine_renders_builtins_and_includes(tmp_path: Path) -> None:
    answer = engine.answer(
        request(
            tmp_path,
            {
                "files/a.j2": "{{ node }} {{ labels.site }} {% include 'files/b.j2' %}",
                "files/b.j2": "{{ branch }}-{{ commit[:4] }}",
            },
        )
    )
    assert rendered(answer)["files/a.j2"] == "n1 berlin stable-cccc"
    assert not any(f["secret"] for f in answer["files"])


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ labels.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{% set x = labels.update({'a': 1}) %}",
    ],
)
def test_engine_sandbox_refuses_escapes(tmp_path: Path, template: str) -> None:
    answer = engine.answer(request(tmp_path, {"files/x.j2": template}))
    assert "common/files/x.j2 line 1:" in answer["error"]
    assert "SecurityError" in answer["error"] or "UndefinedError" in answer["error"]


def test_engine_out_of_memory_is_an_error_not_a_crash(tmp_path: Path) -> None:
    import json  # noqa: PLC0415

    done = subprocess.run(
        [sys.executable, "-I", "-m", "agent.render.engine"],
        input=json.dumps(request(tmp_path, {"files/x.j2": "{{ 'x' * 4000000000 }}"})).encode(),
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert b"x.j2 line 1: needs more than" in done.stdout, done.stdout + done.stderr


def test_pyrage_output_decrypts_with_the_age_cli(tmp_path: Path) -> None:
    identity = tmp_path / "age.key"
    recipient, created = keys.ensure_identity(identity)
    assert created
    ciphertext = pyrage.encrypt(b"from pyrage\n", [pyrage.x25519.Recipient.from_str(recipient)])
    (tmp_path / "x.age").write_bytes(ciphertext)
    done = subprocess.run(
        ["age", "-d", "-i", str(identity), str(tmp_path / "x.age")],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"from pyrage\n"


def test_identity_problems_are_clear(tmp_path: Path) -> None:
    with pytest.raises(keys.IdentityError, match=r"does not exist .*keygen"):
        keys.recipient(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(keys.IdentityError, match="line 1: not an age key"):
        keys.recipient(bad)


def test_seal_is_keyed_and_stable(tmp_path: Path) -> None:
    secret = DesiredFile("files/t", b"1234", 0o100644, "common", secret=True)
    plain = DesiredFile("files/p", b"1234", 0o100644, "common")
    seal = ContentSeal(tmp_path / "a")
    (tmp_path / "a").mkdir()
    recorded = seal.digest(secret)
    assert recorded.startswith("hmac-sha256:") and seal.digest(plain).startswith("sha256:")
    assert seal.matches(b"1234", recorded) and not seal.matches(b"1235", recorded)
    assert ContentSeal(tmp_path / "a").digest(secret) == recorded, "key is kept"
    (tmp_path / "b").mkdir()
    assert ContentSeal(tmp_path / "b").digest(secret) != recorded, "key is per node"
    assert (tmp_path / "a/digest.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "a/digest.key").write_bytes(b"short")
    with pytest.raises(StateError, match="truncated"):
        ContentSeal(tmp_path / "a").digest(secret)


def test_rendered_output_is_held_to_the_size_limits(tmp_path: Path) -> None:
    big = engine.answer(request(tmp_path, {"files/big.j2": "{{ 'x' * 1001 }}"}))
    assert big["error"] == (
        "common/files/big.j2 produces 1,001 bytes, over [targets.files] max_file_size (1,000 bytes)"
    )
    total = engine.answer(request(tmp_path, {f"files/{n}.j2": "{{ 'x' * 600 }}" for n in "abc"}))
    assert "add up to 1,800 bytes, over [targets.files] max_total_size" in total["error"]
