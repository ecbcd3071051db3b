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
    """The database (SQLite or PostgreSQL) cannot be opened, migrated or written."""


class GitWatchError(HubError):
    """The fleet repository could not be listed (server down, auth, bad URL)."""


class ApiClientError(HubError):
    """The CLI could not talk to the hub API (unreachable, bad token, error reply)."""


class PromoteError(HubError):
    """A stage branch could not be read or moved on the fleet repository."""


class BranchMoved(PromoteError):
    """Someone else moved the stage branch first; nothing was pushed or overwritten."""


class RolloutRefused(HubError):
    """A promotion, rollback or resume was not done (gate closed, paused, bad request);
    the API answers 409 with the reason."""

    def __init__(self, message: str, evidence: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.evidence = evidence or {}


class RecipientsError(HubError):
    """The database of enrolled age recipients cannot be read or written, or a recipient
    is malformed."""
