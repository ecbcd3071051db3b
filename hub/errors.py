"""The hub's exception tree: one root, library errors mapped at the module boundary."""

from __future__ import annotations


class HubError(Exception):
    """Root of every error the hub raises on purpose."""


class ConfigError(HubError):
    """fleet.toml is unusable. The message names file, key and problem (CLI exit code 2)."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


class StoreError(HubError):
    """The SQLite database cannot be opened, migrated or written."""


class GitWatchError(HubError):
    """The fleet repository could not be listed (server down, auth, bad URL)."""


class ApiClientError(HubError):
    """The CLI could not talk to the hub API (unreachable, bad token, error reply)."""
