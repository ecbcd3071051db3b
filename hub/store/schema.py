"""The SQLite schema as numbered migrations, applied forward on open.

Version N is ``MIGRATIONS[N - 1]``; the ``schema_version`` table holds one row per
applied version. Append new migrations, never edit applied ones: an older hub refuses
a database with a newer schema rather than misread it.
"""

from __future__ import annotations

from typing import Final

import aiosqlite

from hub.errors import StoreError

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE nodes (
            node TEXT PRIMARY KEY,
            branch TEXT,
            state TEXT,
            seq INTEGER NOT NULL DEFAULT -1,
            applied TEXT,
            desired TEXT,
            drift_count INTEGER NOT NULL DEFAULT 0,
            online INTEGER NOT NULL DEFAULT 1,
            heartbeat REAL NOT NULL DEFAULT 0,
            last_heard REAL NOT NULL,
            stale_at REAL NOT NULL,
            observed_at REAL,
            doc TEXT
        ) WITHOUT ROWID""",
        # Covering index: the summary groups by branch and effective state from it alone.
        "CREATE INDEX nodes_summary ON nodes(branch, online, state, stale_at)",
        "CREATE INDEX nodes_drifted ON nodes(node) WHERE drift_count > 0",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            node TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at REAL,
            type TEXT NOT NULL,
            commit_sha TEXT,
            details TEXT NOT NULL,
            received REAL NOT NULL,
            UNIQUE (node, seq)
        )""",
        "CREATE INDEX events_node ON events(node, id)",
        "CREATE INDEX events_type ON events(type, id)",
        "CREATE INDEX events_received ON events(received)",
    ),
    (
        # Rollout audit: every promotion, halt, rollback and resume, refused ones too.
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            action TEXT NOT NULL,
            stage TEXT NOT NULL,
            who TEXT NOT NULL,
            from_commit TEXT,
            to_commit TEXT,
            outcome TEXT NOT NULL,
            forced INTEGER NOT NULL DEFAULT 0,
            reason TEXT NOT NULL,
            evidence TEXT NOT NULL
        )""",
        "CREATE INDEX audit_stage ON audit(stage, id)",
        # A paused stage takes no automatic promotions; a halt also blocks downstream.
        """CREATE TABLE stage_pause (
            stage TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            commit_sha TEXT,
            at REAL NOT NULL,
            who TEXT NOT NULL,
            reason TEXT NOT NULL
        )""",
        # Heads each stage branch had, to find "the previous commit" for a rollback.
        """CREATE TABLE stage_heads (
            stage TEXT NOT NULL,
            commit_sha TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (stage, commit_sha)
        )""",
    ),
    (
        # Events are unique per (node, incarnation, seq): a re-imaged node restarts its
        # seqs under a new incarnation ('' for agents that send none). SQLite cannot drop
        # the old UNIQUE (node, seq) in place, hence the copy.
        """CREATE TABLE events_v3 (
            id INTEGER PRIMARY KEY,
            node TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at REAL,
            type TEXT NOT NULL,
            commit_sha TEXT,
            details TEXT NOT NULL,
            received REAL NOT NULL,
            incarnation TEXT NOT NULL DEFAULT '',
            UNIQUE (node, incarnation, seq)
        )""",
        "INSERT INTO events_v3 (id, node, seq, at, type, commit_sha, details, received) "
        "SELECT id, node, seq, at, type, commit_sha, details, received FROM events",
        "DROP TABLE events",
        "ALTER TABLE events_v3 RENAME TO events",
        "CREATE INDEX events_node ON events(node, id)",
        "CREATE INDEX events_type ON events(type, id)",
        "CREATE INDEX events_received ON events(received)",
    ),
    (
        # The audit's who is the authenticated user; what the caller said about itself
        # ("cli:alice") is kept beside it.
        "ALTER TABLE audit ADD COLUMN on_behalf TEXT",
        # Notifications waiting for (or done with) delivery, one row per event and sink:
        # delivered at least once, across receiver outages and hub restarts.
        """CREATE TABLE notify_outbox (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,
            sink TEXT NOT NULL,
            body TEXT NOT NULL,
            created REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL,
            delivered REAL,
            last_error TEXT
        )""",
        "CREATE INDEX notify_outbox_due ON notify_outbox(next_at) WHERE delivered IS NULL",
        # Fleet state counts over time, for the dashboard's chart (pruned after 48 h).
        """CREATE TABLE state_samples (
            at REAL NOT NULL,
            state TEXT NOT NULL,
            nodes INTEGER NOT NULL,
            PRIMARY KEY (at, state)
        ) WITHOUT ROWID""",
    ),
    (
        # A promotion into a stage with waves, one row per stage (the latest run): which
        # wave holds the candidate now and since when its gate holds (the soak clock).
        """CREATE TABLE wave_runs (
            stage TEXT PRIMARY KEY,
            candidate TEXT NOT NULL,
            origin TEXT,
            wave INTEGER NOT NULL,
            moved_at REAL NOT NULL,
            holding_since REAL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL
        ) WITHOUT ROWID""",
        # Each node's wave, fixed when the run starts (a relabel counts at the next one).
        """CREATE TABLE wave_members (
            stage TEXT NOT NULL,
            node TEXT NOT NULL,
            wave TEXT NOT NULL,
            PRIMARY KEY (stage, node)
        ) WITHOUT ROWID""",
    ),
    (
        # The agent version per node, written by ingest, so version counts per stage
        # come from a covering index instead of every document (~370 ms at 100,000).
        "ALTER TABLE nodes ADD COLUMN agent_version TEXT",
        "UPDATE nodes SET agent_version = json_extract(doc, '$.version')",
        "CREATE INDEX nodes_versions ON nodes(branch, agent_version)",
    ),
    (
        # Since when each stage's gate holds for its candidate: the soak clock survives
        # a hub restart (and, on PostgreSQL, a change of leader).
        """CREATE TABLE gate_holding (
            stage TEXT PRIMARY KEY,
            candidate TEXT NOT NULL,
            since REAL NOT NULL
        )""",
    ),
    (
        # The latest plan of each stage (JSON), so any replica shows the one made.
        """CREATE TABLE latest_plans (
            stage TEXT PRIMARY KEY,
            doc TEXT NOT NULL,
            at REAL NOT NULL
        )""",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


async def migrate(db: aiosqlite.Connection) -> None:
    """Bring ``db`` to :data:`SCHEMA_VERSION`, one transaction per migration."""
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    async with db.execute("SELECT max(version) FROM schema_version") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row and row[0] is not None else 0
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {current} is newer than this hub ({SCHEMA_VERSION})"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        await db.execute("BEGIN")
        try:
            for statement in MIGRATIONS[version - 1]:
                await db.execute(statement)
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
