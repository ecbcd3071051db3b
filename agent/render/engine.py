"""The rendering child (``python -m agent.render.engine``): one commit's templates and secrets.

Reads one JSON request on stdin, writes one JSON answer on stdout. Jinja2 runs in an
ImmutableSandboxedEnvironment with StrictUndefined; pyrage decrypts. Address space is
capped so a template such as ``{{ 'x' * 10**10 }}`` fails here, not on the node.

An error message never carries a secret: every secret value is masked in the text of
an error raised while a template that reads ``secrets`` was rendering.
"""

from __future__ import annotations

import base64
import json
import resource
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import pyrage
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agent.render import keys, values

MAX_ADDRESS_SPACE = 1024 * 1024 * 1024
MASK = "***"


class RenderError(Exception):
    """Refuses the commit; the message names the file (and line) and is safe to report."""


class _Env(ImmutableSandboxedEnvironment):
    secrets_read = False
    """Set when a template resolves the name ``secrets`` (its output is then secret)."""


class _TrackingContext(Context):
    def resolve_or_missing(self, key: str) -> Any:
        if key == "secrets" and isinstance(self.environment, _Env):
            self.environment.secrets_read = True
        return super().resolve_or_missing(key)


_Env.context_class = _TrackingContext


def _leaves(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield str(value)


def _masker(secrets: dict[str, Any]) -> Callable[[str], str]:
    words = sorted({w for w in _leaves(secrets) if w}, key=len, reverse=True)

    def mask(text: str) -> str:
        for word in words:
            text = text.replace(word, MASK)
        return text

    return mask


class _Request:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.identity = Path(doc["identity"])
        self._identities: list[Any] | None = None
        self._total = 0

    def output(self, name: str, path: str, data: bytes, secret: bool) -> dict[str, Any]:
        """One produced file, within [targets.files] max_file_size / max_total_size."""
        limit, total_limit = self.doc["max_file_size"], self.doc["max_total_size"]
        if len(data) > limit:
            raise RenderError(
                f"{name} produces {len(data):,} bytes, over [targets.files] "
                f"max_file_size ({limit:,} bytes)"
            )
        self._total += len(data)
        if self._total > total_limit:
            raise RenderError(
                f"rendered and decrypted files up to {name} add up to {self._total:,} bytes, "
                f"over [targets.files] max_total_size ({total_limit:,} bytes)"
            )
        return {"path": path, "data": base64.b64encode(data).decode(), "secret": secret}

    def decrypt(self, name: str, data: bytes) -> bytes:
        if self._identities is None:
            try:
                self._identities = keys.load_identities(self.identity)
            except keys.IdentityError as err:
                raise RenderError(f"{name}: cannot decrypt: {err}") from err
        try:
            return bytes(pyrage.decrypt(data, self._identities))
        except pyrage.DecryptError as err:
            hint = " (encrypted for other nodes only?)" if "No matching keys" in str(err) else ""
            raise RenderError(f"{name}: cannot decrypt with {self.identity}: {err}{hint}") from err


def _tables(req: _Request, field: str, decrypt: bool) -> list[tuple[str, dict[str, Any]]]:
    tables = []
    for layer in req.doc["layers"]:
        raw = layer[field]
        if raw is None:
            continue
        name = f"{layer['origin']}/{values.LAYER_FILES[field]}"
        data = base64.b64decode(raw)
        if decrypt:
            data = req.decrypt(name, data)
        try:
            table = values.parse_toml(name, data)
        except values.MergeError as err:
            raise RenderError(str(err)) from err
        if not decrypt and (reserved := sorted(values.BUILTINS & set(table))):
            raise RenderError(f"{name}: {reserved[0]!r} is a built-in name and cannot be a value")
        tables.append((name, table))
    return tables


def _merged(tables: list[tuple[str, dict[str, Any]]], what: str) -> dict[str, Any]:
    try:
        return values.merge(tables)
    except values.MergeError as err:
        raise RenderError(f"{what}: {err}") from err


def _template_line(err: BaseException, filename: str) -> int | None:
    """The template line of a runtime error: Jinja rewrites tracebacks onto template lines."""
    line = None
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _render_all(req: _Request) -> list[dict[str, Any]]:
    doc = req.doc
    context = _merged(_tables(req, "values", decrypt=False), values.VALUES_FILE)
    secrets = _merged(_tables(req, "secrets", decrypt=True), values.SECRETS_FILE)
    context.update(
        node=doc["node"],
        labels=doc["labels"],
        branch=doc["branch"],
        commit=doc["commit"],
        facts=values.facts(),
        secrets=secrets,
    )
    out = []
    for f in doc["encrypted"]:
        name = f"{f['origin']}/{f['path']}"
        data = req.decrypt(name, base64.b64decode(f["data"]))
        out.append(req.output(name, f["path"], data, secret=True))
    sources = {f["path"]: f for f in doc["templates"]}

    def load(path: str) -> tuple[str, str, Callable[[], bool]] | None:
        f = sources.get(path)
        if f is None:
            return None
        name = f"{f['origin']}/{path}"
        try:
            return base64.b64decode(f["data"]).decode("utf-8"), name, lambda: True
        except UnicodeDecodeError as err:
            raise RenderError(f"{name}: a template must be UTF-8 text") from err

    env = _Env(
        loader=jinja2.FunctionLoader(load),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    mask = _masker(secrets)
    for path in sources:
        name = f"{sources[path]['origin']}/{path}"
        env.secrets_read = False
        try:
            text = env.get_template(path).render(context)
        except RenderError:
            raise
        except jinja2.TemplateSyntaxError as err:
            raise RenderError(f"{err.filename or name} line {err.lineno}: {err.message}") from err
        except Exception as err:
            line = _template_line(err, name)
            where = f"{name} line {line}" if line else name
            detail = f"{type(err).__name__}: {err}"
            if isinstance(err, MemoryError):
                detail = f"needs more than {MAX_ADDRESS_SPACE >> 20} MiB of memory"
            raise RenderError(f"{where}: {mask(detail) if env.secrets_read else detail}") from err
        out.append(req.output(name, path, text.encode("utf-8"), env.secrets_read))
    return out


def answer(doc: dict[str, Any]) -> dict[str, Any]:
    """The child's verdict for one request (also the unit tests' entry point)."""
    req = _Request(doc)
    try:
        if doc["op"] == "recipient":
            return {"recipient": keys.recipient(req.identity)}
        return {"files": _render_all(req)}
    except keys.IdentityError as err:
        return {"error": str(err)}
    except RenderError as err:
        return {"error": str(err)}
    except MemoryError:
        return {"error": f"rendering needed more than {MAX_ADDRESS_SPACE >> 20} MiB"}


def main() -> int:
    resource.setrlimit(resource.RLIMIT_AS, (MAX_ADDRESS_SPACE, MAX_ADDRESS_SPACE))
    doc = json.loads(sys.stdin.buffer.read())
    sys.stdout.write(json.dumps(answer(doc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
