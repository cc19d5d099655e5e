"""Versioned schema. Each entry is one migration; a store applies the ones it has not seen.

Never edit a released migration: append a new one.
"""

from __future__ import annotations

import re

SQLITE_MIGRATIONS: list[list[str]] = [
    # 1: jobs, their attempts, and the worker registry snapshot
    [
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task TEXT NOT NULL,
            queue TEXT NOT NULL,
            priority INTEGER NOT NULL,
            state TEXT NOT NULL,
            payload TEXT NOT NULL,
            fingerprint TEXT,
            idempotency_key TEXT UNIQUE,
            run_at REAL NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            lost_count INTEGER NOT NULL DEFAULT 0,
            retries INTEGER NOT NULL,
            backoff REAL NOT NULL,
            max_backoff REAL NOT NULL,
            jitter REAL NOT NULL,
            timeout REAL,
            resources TEXT,
            labels TEXT,
            worker TEXT,
            lease_until REAL,
            result TEXT,
            error TEXT,
            finished_at REAL
        )""",
        "CREATE INDEX jobs_queued ON jobs(priority DESC, id) WHERE state='queued'",
        "CREATE INDEX jobs_pending ON jobs(run_at) WHERE state='pending'",
        "CREATE INDEX jobs_running ON jobs(worker, lease_until) WHERE state='running'",
        "CREATE INDEX jobs_state ON jobs(state, id)",
        "CREATE INDEX jobs_task ON jobs(task, id)",
        "CREATE INDEX jobs_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL",
        """CREATE TABLE attempts (
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            number INTEGER NOT NULL,
            worker TEXT,
            started_at REAL NOT NULL,
            finished_at REAL,
            outcome TEXT,
            error TEXT,
            late TEXT,
            PRIMARY KEY (job_id, number)
        ) WITHOUT ROWID""",
        "CREATE INDEX attempts_finished ON attempts(finished_at)",
        """CREATE TABLE workers (
            address TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            pid INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            nthreads INTEGER NOT NULL,
            memory_limit INTEGER NOT NULL,
            inflight INTEGER NOT NULL,
            completed INTEGER NOT NULL,
            failed INTEGER NOT NULL,
            last_seen REAL NOT NULL,
            labels TEXT NOT NULL,
            resources TEXT NOT NULL,
            metrics TEXT NOT NULL
        )""",
    ],
    # 2: placement: soft preferences, why a job waits, and operator commands for workers
    [
        "ALTER TABLE jobs ADD COLUMN prefers TEXT",
        "ALTER TABLE jobs ADD COLUMN waiting TEXT",
        """CREATE TABLE worker_commands (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            worker TEXT NOT NULL,
            action TEXT NOT NULL,
            created_at REAL NOT NULL,
            done_at REAL,
            outcome TEXT
        )""",
        "CREATE INDEX worker_commands_open ON worker_commands(id) WHERE done_at IS NULL",
        "ALTER TABLE workers ADD COLUMN breaker TEXT NOT NULL DEFAULT 'closed'",
        "ALTER TABLE workers ADD COLUMN models TEXT NOT NULL DEFAULT '[]'",
    ],
    # 3: the REST API: who submitted a job, an event log for live updates, tokens, the audit log
    [
        "ALTER TABLE jobs ADD COLUMN owner TEXT",
        "CREATE INDEX jobs_owner ON jobs(owner, id) WHERE owner IS NOT NULL",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            job_id INTEGER,
            state TEXT,
            worker TEXT,
            detail TEXT
        )""",
        """CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            created_by TEXT,
            expires_at REAL,
            revoked_at REAL
        )""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            role TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            status INTEGER NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX audit_actor ON audit(actor, id)",
    ],
    # 4: pipeline runs and the stage jobs they link (a job may serve several runs), camera counts
    [
        """CREATE TABLE pipeline_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            spec TEXT NOT NULL,
            input TEXT NOT NULL,
            state TEXT NOT NULL,
            fresh INTEGER NOT NULL DEFAULT 0,
            problems TEXT,
            owner TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL
        )""",
        "CREATE INDEX pipeline_runs_active ON pipeline_runs(id) WHERE state='running'",
        "CREATE INDEX pipeline_runs_name ON pipeline_runs(name, id)",
        """CREATE TABLE pipeline_jobs (
            run_id INTEGER NOT NULL REFERENCES pipeline_runs(id),
            stage TEXT NOT NULL,
            item INTEGER NOT NULL,
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            PRIMARY KEY (run_id, stage, item)
        ) WITHOUT ROWID""",
        "CREATE INDEX pipeline_jobs_job ON pipeline_jobs(job_id)",
        """CREATE TABLE counts (
            job_id INTEGER NOT NULL,
            camera TEXT NOT NULL,
            frame INTEGER NOT NULL,
            video_time REAL NOT NULL,
            at REAL NOT NULL,
            total INTEGER NOT NULL,
            left_to_right INTEGER NOT NULL,
            right_to_left INTEGER NOT NULL,
            PRIMARY KEY (job_id, frame)
        ) WITHOUT ROWID""",
        "CREATE INDEX counts_camera ON counts(camera, at)",
    ],
    # 5: the certificates the head refuses (`clusterai certs revoke`), by serial number
    [
        """CREATE TABLE revoked_certs (
            serial TEXT PRIMARY KEY,
            node TEXT,
            role TEXT,
            revoked_at REAL NOT NULL,
            revoked_by TEXT
        )""",
    ],
    # 6: the autoscaler: its decision log, and small documents (the operator's override, the
    # last state it reported) that the API, the CLI and the metrics read
    [
        """CREATE TABLE scale_decisions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            profile TEXT NOT NULL,
            from_workers INTEGER NOT NULL,
            to_workers INTEGER NOT NULL,
            reason TEXT NOT NULL,
            inputs TEXT NOT NULL
        )""",
        "CREATE INDEX scale_decisions_at ON scale_decisions(at)",
        """CREATE TABLE autoscale (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
    ],
    # 7: join tokens (`clusterai join`): how many more times each may be used (NULL: not one)
    [
        "ALTER TABLE tokens ADD COLUMN uses_left INTEGER",
    ],
    # 8: sweeps (each trial is a job), the metrics trials report, and the model registry
    [
        """CREATE TABLE sweeps (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            spec TEXT NOT NULL,
            state TEXT NOT NULL,
            owner TEXT,
            best INTEGER,
            note TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL
        )""",
        "CREATE INDEX sweeps_state ON sweeps(state)",
        """CREATE TABLE trials (
            sweep_id INTEGER NOT NULL,
            number INTEGER NOT NULL,
            params TEXT NOT NULL,
            job_id INTEGER NOT NULL,
            state TEXT NOT NULL,
            value REAL,
            note TEXT,
            created_at REAL NOT NULL,
            finished_at REAL,
            PRIMARY KEY (sweep_id, number)
        ) WITHOUT ROWID""",
        "CREATE INDEX trials_job ON trials(job_id)",
        """CREATE TABLE trial_metrics (
            sweep_id INTEGER NOT NULL,
            number INTEGER NOT NULL,
            step INTEGER NOT NULL,
            metrics TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (sweep_id, number, step)
        ) WITHOUT ROWID""",
        """CREATE TABLE models (
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            artifact TEXT NOT NULL,
            params TEXT NOT NULL,
            metrics TEXT NOT NULL,
            sweep_id INTEGER,
            trial INTEGER,
            job_id INTEGER,
            created_by TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (name, version)
        ) WITHOUT ROWID""",
        """CREATE TABLE model_aliases (
            name TEXT NOT NULL,
            alias TEXT NOT NULL,
            version INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (name, alias)
        ) WITHOUT ROWID""",
    ],
]


# The same schema for PostgreSQL, step for step (a store's schema_version means the same on both),
# derived rather than copied so the two cannot drift: 64-bit integers, doubles, identity columns.
def to_postgres(statement: str) -> str:
    identity = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    statement = statement.replace("INTEGER PRIMARY KEY AUTOINCREMENT", identity)
    statement = statement.replace(" WITHOUT ROWID", "")
    statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
    return re.sub(r"\bINTEGER\b", "BIGINT", statement)


POSTGRES_MIGRATIONS: list[list[str]] = [[to_postgres(s) for s in script] for script in SQLITE_MIGRATIONS]
