"""Signature checks in a short-lived child process (``python -m agent.signcheck``).

The crypto library behind agent.trust costs ~8 MB of resident memory once imported, and
Python never unloads a module: verifying in-process would keep that in the daemon for
its whole life, past the 35 MB idle budget. A head commit is verified only when the
branch moves, so a ~0.1 s child per new commit is the cheaper trade. The child is also
a crash boundary around parsing attacker-supplied signature bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from typing import Any

from agent.config import TrustConfig
from agent.errors import ConfigError, TrustError

TIMEOUT = 30.0


def _request(
    cfg: TrustConfig, commit: str = "", payload: bytes = b"", signature: bytes | None = None
) -> bytes:
    return json.dumps(
        {
            "allowed_signers": str(cfg.allowed_signers) if cfg.allowed_signers else None,
            "require_signed": cfg.require_signed,
            "commit": commit,
            "payload": base64.b64encode(payload).decode(),
            "signature": base64.b64encode(signature).decode() if signature is not None else None,
        }
    ).encode()


def _answer(raw: bytes, commit: str) -> str | None:
    try:
        doc: dict[str, Any] = json.loads(raw)
    except ValueError as err:
        raise TrustError(commit, f"signature checker failed: {raw[-300:]!r}") from err
    kind = doc.get("error")
    if kind == "config":
        raise ConfigError(doc["path"], doc["key"], doc["problem"])
    if kind == "trust":
        raise TrustError(commit, doc["reason"])
    signer: str | None = doc.get("signer")
    return signer


def _command() -> list[str]:
    return [sys.executable, "-I", "-m", "agent.signcheck"]


class SignatureChecker:
    """The daemon's side: same verdicts as :class:`agent.trust.Verifier`, out of process."""

    def __init__(self, cfg: TrustConfig) -> None:
        self.cfg = cfg

    def check_config(self) -> None:
        """Load allowed_signers once in a child: ConfigError now, not at the first commit."""
        done = subprocess.run(
            _command(),
            input=_request(self.cfg),
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        _answer(done.stdout, "")

    async def verify(self, commit: str, payload: bytes, signature: bytes | None) -> str | None:
        proc = await asyncio.create_subprocess_exec(
            *_command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(TIMEOUT):
                out, err = await proc.communicate(_request(self.cfg, commit, payload, signature))
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise TrustError(commit, "signature check timed out") from exc
        return _answer(out or err, commit)


def main() -> int:
    """Child: read one request on stdin, print one JSON verdict on stdout."""
    from pathlib import Path  # noqa: PLC0415

    from agent.trust import Verifier  # noqa: PLC0415 - the heavy import stays in the child

    req = json.loads(sys.stdin.buffer.read())
    cfg = TrustConfig(
        allowed_signers=Path(req["allowed_signers"]) if req["allowed_signers"] else None,
        require_signed=req["require_signed"],
    )
    result: dict[str, Any]
    try:
        verifier = Verifier(cfg)
        if req["commit"]:
            signature = req["signature"]
            result = {
                "signer": verifier.verify(
                    req["commit"],
                    base64.b64decode(req["payload"]),
                    base64.b64decode(signature) if signature is not None else None,
                )
            }
        else:
            result = {"signer": None}
    except ConfigError as err:
        result = {"error": "config", "path": err.path, "key": err.key, "problem": err.problem}
    except TrustError as err:
        result = {"error": "trust", "reason": err.reason}
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
