"""The hub API as the CLI's client commands reach it: stdlib HTTP, JSON in and out."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hub.config import DEFAULT_CONFIG_PATH, load_config, read_secret
from hub.errors import ApiClientError, ConfigError


class ApiClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        problem = _url_problem(url)
        if problem:
            raise ApiClientError(f"hub API URL {url!r} {problem}")
        if not 0 < timeout <= 3600:  # also refuses nan
            raise ApiClientError(f"--timeout must be between 0 and 3600 seconds, got {timeout}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        body: dict[str, Any] | None = None,
    ) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        data = None if body is None else json.dumps(body).encode()
        # The scheme is checked in __init__ (http/https only).
        req = urllib.request.Request(f"{self.url}{path}{query}", data, method=method)  # noqa: S310
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read()).get("error", err.reason)
            except (ValueError, AttributeError):
                message = err.reason
            raise ApiClientError(f"hub API {path}: HTTP {err.code}: {message}") from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ApiClientError(f"cannot reach the hub API at {self.url}: {reason}") from err
        except ValueError as err:
            raise ApiClientError(f"hub API {path} did not answer with JSON") from err


def _url_problem(url: str) -> str | None:
    """Why urllib would choke on this URL later (with a traceback), or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
    except ValueError as err:
        return f"is not a URL: {err}"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname or not url.isprintable() or any(c.isspace() for c in url):
        return "must look like http://127.0.0.1:8080"
    return None


def api_client(args: argparse.Namespace) -> ApiClient:
    """The client for --url/--token-file, or else what --config (fleet.toml) names."""
    url: str | None = args.url
    token_file: Path | None = args.token_file
    if url is None or token_file is None:
        path = args.config or (DEFAULT_CONFIG_PATH if url is None else None)
        if path is not None:
            if args.config is None and not path.exists():
                # A newcomer's first `edgefleet-hub status`: say how to point it at a hub.
                raise ConfigError(str(path), "(file)", "does not exist: give --config "
                                  "FLEET_TOML, or --url URL (and --token-file FILE)")  # fmt: skip
            cfg = load_config(path)
            url = url or cfg.hub.api_url
            token_file = token_file or cfg.hub.token_file
    assert url is not None
    token = None
    if token_file is not None:
        try:
            token = read_secret(token_file)
        except OSError as err:
            raise ApiClientError(f"cannot read token file {token_file}: {err.strerror}") from err
    return ApiClient(url, token, args.timeout)
