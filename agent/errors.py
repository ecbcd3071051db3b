"""The agent's exception tree.

Two kinds drive retries: a TransientError (server down, timeout) is retried with
backoff and jitter; a TerminalError (refused commit, invalid manifest, hostile path)
is reported and not retried until the input changes. Library errors are mapped to
these at the module boundary (``raise FetchError(...) from err``).
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Root of every error the agent raises on purpose."""


class TransientError(EdgefleetError):
    """Retrying later may succeed (network, server, timeouts)."""


class TerminalError(EdgefleetError):
    """Retrying the same input will fail again; report and wait for a new commit."""


class ConfigError(TerminalError):
    """The agent's configuration file is unusable. Message names file, key and problem."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


class FetchError(TransientError):
    """The Git server could not be reached or did not answer as expected."""


class SourceError(TerminalError):
    """The fetched tree is unusable (missing branch or path, malformed options file)."""


class TrustError(TerminalError):
    """A commit is unsigned, wrongly signed or an unacceptable history move."""

    def __init__(self, commit: str, reason: str) -> None:
        super().__init__(f"commit {commit[:12]}: {reason}")
        self.commit = commit
        self.reason = reason


class PlanError(TerminalError):
    """The desired state is invalid (hostile path, bad unit name, clashing owner)."""


class ApplyError(TransientError):
    """Applying a change failed on this node; the reconcile rolls back."""


class UnavailableError(ApplyError):
    """A target's backend (e.g. the Kubernetes API server) cannot be reached.

    The apply was cut off, not refused by the commit: it resumes on the next reconcile
    and the commit is not marked bad (a rollback would fail the same way).
    """


class HealthError(EdgefleetError):
    """Applied state did not become healthy within the configured timeout."""


class StateError(EdgefleetError):
    """The agent's own state directory is unreadable or unwritable."""
