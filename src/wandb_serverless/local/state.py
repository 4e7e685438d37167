"""Durable state of the local backend: models, checkpoints, training jobs and their events in
SQLite (WAL) under the data directory, adapters and datasets as files beside it."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY, entity TEXT NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL,
    base_model TEXT NOT NULL, run_id TEXT, created REAL NOT NULL,
    UNIQUE (entity, project, name)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY, model_id TEXT NOT NULL REFERENCES models(id), step INTEGER NOT NULL,
    path TEXT NOT NULL, created REAL NOT NULL, UNIQUE (model_id, step)
);
CREATE TABLE IF NOT EXISTS metrics (
    model_id TEXT NOT NULL, step INTEGER NOT NULL, key TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (model_id, step, key)
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, model_id TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
    request TEXT NOT NULL, created REAL NOT NULL, seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL,
    data TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS aliases (
    model_id TEXT NOT NULL, alias TEXT NOT NULL, step INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (model_id, alias)
);
"""

RESTART_MESSAGE = (
    "the local backend restarted while this job was running; earlier checkpoints are intact"
)


@dataclass(frozen=True)
class ModelRow:
    id: str
    entity: str
    project: str
    name: str
    base_model: str
    run_id: str | None

    def as_response(self) -> dict[str, Any]:
        return {
            k: getattr(self, k) for k in ("id", "entity", "project", "name", "base_model", "run_id")
        }


@dataclass(frozen=True)
class CheckpointRow:
    id: str
    model_id: str
    step: int
    path: str


@dataclass(frozen=True)
class JobRow:
    id: str
    model_id: str
    kind: str
    status: str
    request: dict[str, Any]


def _job_row(row: Sequence[Any]) -> JobRow:
    """A ``jobs`` row (id, model_id, kind, status, request) as a ``JobRow``."""
    return JobRow(row[0], row[1], row[2], row[3], json.loads(row[4]))


class State:
    """Thread-safe access to the SQLite state (one connection, serialised by a lock)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.adapters_dir = data_dir / "adapters"
        self.artifacts_dir = data_dir / "artifacts"
        for directory in (data_dir, self.adapters_dir, self.artifacts_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            data_dir / "state.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def inside(self, base: Path, *parts: str) -> Path:
        """``base/parts...`` if it resolves inside the data dir (:func:`inside`)."""
        return inside(base, base.joinpath(*parts), root=self.data_dir)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _all(self, sql: str, *args: Any) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def healthy(self) -> bool:
        try:
            self._all("SELECT 1")
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- models ------------------------------------------------------------------------------

    def find_model(self, entity: str, project: str, name: str) -> ModelRow | None:
        rows = self._all(
            "SELECT id, entity, project, name, base_model, run_id FROM models WHERE entity=? AND project=? AND name=?",
            entity,
            project,
            name,
        )
        return ModelRow(*rows[0]) if rows else None

    def get_model(self, model_id: str) -> ModelRow | None:
        rows = self._all(
            "SELECT id, entity, project, name, base_model, run_id FROM models WHERE id=?", model_id
        )
        return ModelRow(*rows[0]) if rows else None

    def all_models(self) -> list[ModelRow]:
        rows = self._all(
            "SELECT id, entity, project, name, base_model, run_id FROM models ORDER BY created"
        )
        return [ModelRow(*r) for r in rows]

    def create_model(self, entity: str, project: str, name: str, base_model: str) -> ModelRow:
        row = ModelRow(str(uuid.uuid4()), entity, project, name, base_model, name)
        with self._tx() as db:
            db.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.id, entity, project, name, base_model, row.run_id, time.time()),
            )
        return row

    def delete_model(self, model_id: str) -> int:
        with self._tx() as db:
            count = db.execute(
                "SELECT COUNT(*) FROM checkpoints WHERE model_id=?", (model_id,)
            ).fetchone()[0]
            for table in ("checkpoints", "metrics", "aliases"):
                db.execute(f"DELETE FROM {table} WHERE model_id=?", (model_id,))
            db.execute("DELETE FROM models WHERE id=?", (model_id,))
        return count

    def all_checkpoints(self) -> list[tuple[ModelRow, int]]:
        rows = self._all(
            "SELECT m.id, m.entity, m.project, m.name, m.base_model, m.run_id, c.step FROM checkpoints c "
            "JOIN models m ON m.id = c.model_id ORDER BY m.created, c.step"
        )
        return [(ModelRow(*r[:6]), r[6]) for r in rows]

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoints(self, model_id: str, order: str = "asc") -> list[CheckpointRow]:
        direction = "DESC" if order == "desc" else "ASC"
        rows = self._all(
            f"SELECT id, model_id, step, path FROM checkpoints WHERE model_id=? ORDER BY step {direction}",
            model_id,
        )
        return [CheckpointRow(*r) for r in rows]

    def checkpoint(self, model_id: str, step: int | None) -> CheckpointRow | None:
        """The checkpoint at ``step``, or the latest when step is None."""
        if step is None:
            rows = self._all(
                "SELECT id, model_id, step, path FROM checkpoints WHERE model_id=? ORDER BY step DESC LIMIT 1",
                model_id,
            )
        else:
            rows = self._all(
                "SELECT id, model_id, step, path FROM checkpoints WHERE model_id=? AND step=?",
                model_id,
                step,
            )
        return CheckpointRow(*rows[0]) if rows else None

    def latest_step(self, model_id: str) -> int:
        latest = self.checkpoint(model_id, None)
        return latest.step if latest else 0

    def add_checkpoint(self, model_id: str, step: int, path: Path) -> CheckpointRow:
        row = CheckpointRow(str(uuid.uuid4()), model_id, step, str(path))
        with self._tx() as db:
            db.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                (row.id, model_id, step, str(path), time.time()),
            )
        return row

    def delete_checkpoints(
        self, model_id: str, steps: list[int]
    ) -> tuple[list[CheckpointRow], list[int]]:
        with self._tx() as db:
            found, missing = [], []
            for step in steps:
                row = db.execute(
                    "SELECT id, model_id, step, path FROM checkpoints WHERE model_id=? AND step=?",
                    (model_id, step),
                ).fetchone()
                if row is None:
                    missing.append(step)
                    continue
                found.append(CheckpointRow(*row))
                db.execute("DELETE FROM checkpoints WHERE id=?", (row[0],))
                db.execute("DELETE FROM metrics WHERE model_id=? AND step=?", (model_id, step))
        return found, missing

    # -- aliases: named references to a checkpoint (":production"), served like ":latest" ----

    def aliases(self, model_id: str) -> dict[str, int]:
        rows = self._all(
            "SELECT alias, step FROM aliases WHERE model_id=? ORDER BY alias", model_id
        )
        return dict(rows)

    def all_aliases(self) -> list[tuple[ModelRow, str, int]]:
        rows = self._all(
            "SELECT m.id, m.entity, m.project, m.name, m.base_model, m.run_id, a.alias, a.step "
            "FROM aliases a JOIN models m ON m.id = a.model_id ORDER BY m.created, a.alias"
        )
        return [(ModelRow(*r[:6]), r[6], r[7]) for r in rows]

    def set_alias(self, model_id: str, alias: str, step: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO aliases VALUES (?, ?, ?, ?)",
                (model_id, alias, step, time.time()),
            )

    def delete_alias(self, model_id: str, alias: str) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "DELETE FROM aliases WHERE model_id=? AND alias=?", (model_id, alias)
            )
        return cursor.rowcount > 0

    def metrics(self, model_id: str, step: int) -> dict[str, float]:
        rows = self._all(
            "SELECT key, value FROM metrics WHERE model_id=? AND step=?", model_id, step
        )
        return dict(rows)

    def set_metrics(self, model_id: str, step: int, values: dict[str, float]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?)",
                [(model_id, step, key, float(value)) for key, value in values.items()],
            )

    # -- jobs and events ---------------------------------------------------------------------

    def create_job(self, model_id: str, kind: str, request: dict[str, Any]) -> JobRow:
        job = JobRow(str(uuid.uuid4()), model_id, kind, "queued", request)
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.id, model_id, kind, "queued", json.dumps(request), time.time(), seq),
            )
        return job

    def get_job(self, job_id: str) -> JobRow | None:
        rows = self._all("SELECT id, model_id, kind, status, request FROM jobs WHERE id=?", job_id)
        return _job_row(rows[0]) if rows else None

    def next_queued_job(self) -> JobRow | None:
        rows = self._all(
            "SELECT id, model_id, kind, status, request FROM jobs WHERE status='queued' ORDER BY seq LIMIT 1"
        )
        return _job_row(rows[0]) if rows else None

    def unfinished_jobs(self, model_id: str) -> int:
        """How many of the model's jobs are queued or running."""
        rows = self._all(
            "SELECT COUNT(*) FROM jobs WHERE model_id=? AND status IN ('queued', 'running')",
            model_id,
        )
        return int(rows[0][0])

    def set_job_status(self, job_id: str, status: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET status=? WHERE id=?", (status, job_id))

    def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> str:
        event_id = str(uuid.uuid4())
        with self._tx() as db:
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id=?", (job_id,)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                (event_id, job_id, seq, kind, json.dumps(data), time.time()),
            )
        return event_id

    def events(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._all("SELECT id, type, data FROM events WHERE job_id=? ORDER BY seq", job_id)
        return [{"id": r[0], "type": r[1], "data": json.loads(r[2])} for r in rows]

    def fail_interrupted_jobs(self) -> list[str]:
        """After a restart: a job that was running can't resume; it fails with a clear message."""
        running = [r[0] for r in self._all("SELECT id FROM jobs WHERE status='running'")]
        for job_id in running:
            self.add_event(job_id, "training_failed", {"error_message": RESTART_MESSAGE})
            self.set_job_status(job_id, "failed")
        return running


class PathOutsideError(ValueError):
    """A path that would leave the directory it must stay in."""


def inside(base: Path, path: Path, *, root: Path | None = None) -> Path:
    """``path`` if, with every symlink resolved, it lies inside ``base`` (and ``root``); else
    PathOutsideError. Defence in depth: names are checked at the API, and this catches ``..``,
    absolute parts, backslashes and symlinks that lead out."""
    resolved = Path(os.path.realpath(path))
    for limit in (base, root or base):
        if not resolved.is_relative_to(os.path.realpath(limit)):
            raise PathOutsideError(f"{path.name!r} is outside the directory it must stay in")
    return resolved


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """The spec's paginated envelope over an ordered list; ``after`` is exclusive."""
    start = 0
    if after:
        ids = [item["id"] for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    data = items[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else "",
        "last_id": data[-1]["id"] if data else "",
        "has_more": start + limit < len(items),
    }
