"""HTTP health checks (``[[health.http]]`` in edgefleet.toml): one GET, expected status.

urllib in a worker thread rather than aiohttp: the agent needs a handful of GETs per
reconcile, and importing aiohttp would cost several MB of the agent's RSS budget.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from agent.desired import HttpCheck


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # The check is about the URL as written; a redirect is reported by its status code.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _get_status(url: str, timeout: float) -> int:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        err.close()  # it holds the open response
        return int(err.code)


async def check(http: HttpCheck) -> str | None:
    """None when ``http.url`` answers ``http.status``; otherwise why it did not."""
    try:
        status = await asyncio.to_thread(_get_status, http.url, http.timeout)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return f"GET {http.url} failed: {reason}"
    if status != http.status:
        return f"GET {http.url} answered {status}, expected {http.status}"
    return None
