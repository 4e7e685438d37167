"""A SQLite (WAL) store of finished trajectories: each is committed before its rollout context
exits, so a crash of the agent's process loses nothing that had finished."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

from wandb_serverless.rollouts.credit import role_groups
from wandb_serverless.trajectory import NO_TURNS, Trajectory, TrajectoryGroup

SCHEMA = """
CREATE TABLE IF NOT EXISTS trajectories (
    id TEXT PRIMARY KEY, grp TEXT, created REAL NOT NULL, reward REAL NOT NULL,
    metadata TEXT NOT NULL, exception TEXT, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trajectories_by_group ON trajectories (grp, created);
"""


log = logging.getLogger(__name__)
MAX_ROWS_PER_INSERT = 1000  # 7 values a row, under SQLite's default limit of 32766


class RolloutStore:
    """``RolloutStore("rollouts.db")``: save, query by group/metadata/reward, export.

    ``synchronous`` is SQLite's setting. ``"NORMAL"`` (the default, as in Rails): a saved
    trajectory survives any crash or kill of the process that saved it; a power loss or OS
    crash may lose the last few saves (the file stays consistent). ``"FULL"``: each commit is
    fsynced before the save returns, so it survives those too; async saves then wait for
    the fsync on a worker thread instead of committing on the event loop.
    """

    def __init__(
        self, path: str | Path, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.left_out = 0  # rollouts the last groups() left out: no model turn to train on
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()  # held by a group commit around _commit
        self._queue_lock = threading.Lock()
        self._queue: list[tuple[tuple, Future]] = []
        self._async_queues: dict[asyncio.AbstractEventLoop, list[tuple[tuple, asyncio.Future]]] = {}
        self._flushes: set[asyncio.Task] = set()

    def save(
        self, trajectory: Trajectory, *, group: str | None = None, exception: dict | None = None
    ) -> str:
        """Commit one trajectory (committed when this returns); returns its id."""
        row, done = self._enqueue(trajectory, group, exception)
        self._drain(done)
        return row[0]

    async def asave(
        self, trajectory: Trajectory, *, group: str | None = None, exception: dict | None = None
    ) -> str:
        """``save`` for async code (committed when this returns).

        Group commit on the loop: the saves of one loop iteration share one commit. With
        ``synchronous="NORMAL"`` it runs on the loop (a write to the OS, ~0.1 ms a batch: a
        hop to a thread would cost more, in GIL handoffs); with ``"FULL"`` the fsync runs on
        a worker thread, and saves that arrive meanwhile share the next commit.
        """
        row = _row(trajectory, group, exception)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        queue = self._async_queues.get(loop)
        if queue is None:  # no flush pending on this loop: start one
            queue = self._async_queues[loop] = []
            if self.synchronous == "NORMAL":
                loop.call_soon(self._flush_on_loop, loop, queue)
            else:
                flush = loop.create_task(self._flush_on_thread(loop, queue))
                self._flushes.add(flush)
                flush.add_done_callback(self._flushes.discard)
        queue.append((row, waiter))
        await waiter
        return row[0]

    def _flush_on_loop(self, loop: asyncio.AbstractEventLoop, queue: list) -> None:
        del self._async_queues[loop]
        self._commit_batch(queue)

    async def _flush_on_thread(self, loop: asyncio.AbstractEventLoop, queue: list) -> None:
        try:
            while queue:
                batch = queue[:]
                queue.clear()
                try:
                    await asyncio.to_thread(self._commit, [row for row, _ in batch])
                except asyncio.CancelledError:
                    for _, waiter in batch:
                        waiter.cancel()
                    raise
                except Exception as exc:
                    _settle(batch, exc)
                else:
                    _settle(batch, None)
        finally:
            del self._async_queues[loop]

    def _commit(self, rows: list[tuple]) -> None:
        """Insert rows with one statement per ``MAX_ROWS_PER_INSERT``: each is one transaction
        (one fsync with FULL) and one release of the GIL (each costs a wait for it back
        beside a busy event loop)."""
        with self._lock:
            for start in range(0, len(rows), MAX_ROWS_PER_INSERT):
                chunk = rows[start : start + MAX_ROWS_PER_INSERT]
                values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
                self._db.execute(
                    f"INSERT OR REPLACE INTO trajectories VALUES {values}",
                    [value for row in chunk for value in row],
                )

    def _enqueue(
        self, trajectory: Trajectory, group: str | None, exception: dict | None
    ) -> tuple[tuple, Future]:
        row = _row(trajectory, group, exception)
        done: Future = Future()
        with self._queue_lock:
            self._queue.append((row, done))
        return row, done

    def _drain(self, done: Future) -> None:
        """Group commit: whoever holds the write lock commits every queued row in one
        transaction, so concurrent rollouts don't wait on one commit (or fsync) each."""
        with self._lock:
            if not done.done():
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit_batch(batch)
        done.result()

    def _commit_batch(self, batch: list[tuple[tuple, Any]]) -> None:
        """Commit a batch's rows; every waiter sees the outcome, an error included."""
        try:
            self._commit([row for row, _ in batch])
        except BaseException as exc:
            _settle(batch, exc)
        else:
            _settle(batch, None)

    def set_reward(self, trajectory_id: str, reward: float) -> None:
        """Reward a stored trajectory later (e.g. after a judge scored its group)."""
        with self._lock:
            data = self._db.execute(
                "SELECT data FROM trajectories WHERE id=?", (trajectory_id,)
            ).fetchone()
            if data is None:
                raise KeyError(f"no trajectory {trajectory_id!r} in {self.path}")
            trajectory = Trajectory.model_validate_json(data[0])
            trajectory.reward = float(reward)
            self._db.execute(
                "UPDATE trajectories SET reward=?, data=? WHERE id=?",
                (float(reward), trajectory.model_dump_json(), trajectory_id),
            )

    def update(self, trajectory: Trajectory) -> None:
        """Write back a stored trajectory changed after it was saved (its reward, metrics)."""
        rollout_id = trajectory.metadata.get("rollout_id")
        with self._lock:
            cursor = self._db.execute(
                "UPDATE trajectories SET reward=?, data=? WHERE id=?",
                (float(trajectory.reward), trajectory.model_dump_json(), rollout_id),
            )
        if cursor.rowcount == 0:
            raise KeyError(f"no trajectory {rollout_id!r} in {self.path}")

    def _select(
        self,
        columns: str,
        *,
        group: str | None = None,
        names: Iterable[str] | None = None,
        metadata: dict[str, Any] | None = None,
        min_reward: float | None = None,
        max_reward: float | None = None,
        limit: int | None = None,
    ) -> list[tuple]:
        sql, args = f"SELECT {columns} FROM trajectories WHERE 1=1", list[object]()
        if group is not None:
            sql += " AND grp = ?"
            args.append(group)
        if names is not None:  # by the group index: as fast in a million rows as in ten
            names = list(names)
            sql += f" AND grp IN ({', '.join('?' * len(names))})"
            args += names
        for key, value in (metadata or {}).items():
            sql += " AND json_extract(metadata, ?) = ?"
            args += [f"$.{key}", value]
        if min_reward is not None:
            sql += " AND reward >= ?"
            args.append(min_reward)
        if max_reward is not None:
            sql += " AND reward <= ?"
            args.append(max_reward)
        sql += " ORDER BY created"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def query(self, **filters: Any) -> list[Trajectory]:
        """Trajectories in the order they finished, filtered by ``group``, ``metadata``,
        ``min_reward``/``max_reward`` and ``limit``."""
        return [Trajectory.model_validate_json(r[0]) for r in self._select("data", **filters)]

    def rollout_ids(self, names: Iterable[str]) -> set[str]:
        """The ids of the rollouts stored in the groups ``names`` (failed ones included)."""
        return {row[0] for row in self._select("id", names=names)}

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM trajectories").fetchone()[0]

    def groups(
        self,
        *,
        names: Iterable[str] | None = None,
        metadata: dict[str, Any] | None = None,
        role: str | None = None,
    ) -> list[TrajectoryGroup]:
        """Stored rollouts grouped by their rollout group (ungrouped ones are left out); only
        the groups ``names`` when given (an index lookup, whatever the store's size); as the
        model of ``role`` trains on them when given (``rollouts.credit.for_role``).

        A rollout that raised goes to its group's ``exceptions`` only, as in ART: kept as a
        reward-0 trajectory it would skew the group's advantages and count the failure twice.
        """
        rows = self._select("grp, data, exception", names=names, metadata=metadata)
        groups, self.left_out = collect_groups(
            (
                grp,
                Trajectory.model_validate_json(data),
                json.loads(exception) if exception else None,
            )
            for grp, data, exception in rows
        )
        return role_groups(groups, role) if role is not None else groups

    def export_rl_groups(self, **filters: Any) -> list[dict[str, Any]]:
        """Groups as JSON, ready for ``trajectory_groups`` of an RL job."""
        return [group.model_dump(mode="json") for group in self.groups(**filters)]

    def export_sft_rows(
        self, *, top_k_per_group: int | None = None, min_reward: float | None = None
    ) -> list[dict[str, Any]]:
        """``train.jsonl`` rows (``messages`` ending with the assistant, ``tools``) from the best
        trajectories: the top ``k`` of each group by reward, and/or those above ``min_reward``."""
        return best_sft_rows(self.groups(), top_k_per_group=top_k_per_group, min_reward=min_reward)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def collect_groups(
    rows: Iterable[tuple[str | None, Trajectory, dict[str, Any] | None]],
) -> tuple[list[TrajectoryGroup], int]:
    """``(group, trajectory, exception)`` rows as groups, in first-seen order: the group is the
    row's or the trajectory's ``metadata["group"]``; ungrouped rows are left out; a rollout
    that raised goes to its group's ``exceptions`` only. A rollout with no model turn is left
    out too (a training job refuses it) and counted: the second value, also logged."""
    by_group: dict[str, list[Trajectory]] = defaultdict(list)
    exceptions: dict[str, list[dict]] = defaultdict(list)
    empty = 0
    for grp, trajectory, exception in rows:
        name = grp if grp is not None else trajectory.metadata.get("group")
        if name is None:
            continue
        if exception is not None:
            exceptions[str(name)].append(exception)
            by_group.setdefault(str(name), [])
        elif trajectory.model_turns() == 0:
            empty += 1
        else:
            by_group[str(name)].append(trajectory)
    if empty:
        log.warning(
            "%d rollout(s) left out: no model turn was recorded in them (%s)", empty, NO_TURNS
        )
    groups = [
        TrajectoryGroup(
            trajectories=items, exceptions=exceptions.get(name, []), metadata={"group": name}
        )
        for name, items in by_group.items()
    ]
    return groups, empty


def _settle(batch: list[tuple[tuple, Any]], exc: BaseException | None) -> None:
    """Wake a batch's waiters (asyncio or concurrent futures): each sees the commit's error."""
    for _, waiter in batch:
        if not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)


def _row(trajectory: Trajectory, group: str | None, exception: dict | None) -> tuple:
    if not math.isfinite(trajectory.reward):  # SQLite would store NULL and refuse the row
        raise ValueError(
            f"rollout {trajectory.metadata.get('rollout_id')}: the reward must be a finite "
            f"number, not {trajectory.reward}"
        )
    return (
        str(trajectory.metadata.get("rollout_id") or uuid.uuid4().hex),
        group,
        time.time(),
        float(trajectory.reward),
        json.dumps(trajectory.metadata),
        json.dumps(exception) if exception else None,
        trajectory.model_dump_json(),
    )


def best_sft_rows(
    groups: Iterable[TrajectoryGroup],
    *,
    top_k_per_group: int | None = None,
    min_reward: float | None = None,
) -> list[dict[str, Any]]:
    """SFT rows of the top ``k`` trajectories of each group by reward, and/or of those with at
    least ``min_reward``."""
    picked: list[Trajectory] = []
    for group in groups:
        ranked = sorted(group.trajectories, key=lambda t: t.reward, reverse=True)
        picked += ranked[:top_k_per_group] if top_k_per_group else ranked
    if min_reward is not None:
        picked = [t for t in picked if t.reward >= min_reward]
    return [row for t in picked if (row := sft_row(t)) is not None]


def sft_row(trajectory: Trajectory) -> dict[str, Any] | None:
    """One SFT row: the main conversation up to its last assistant turn (None if it has none)."""
    messages = trajectory.messages()
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return None
    row: dict[str, Any] = {"messages": messages[: last + 1]}
    if trajectory.tools:
        row["tools"] = trajectory.tools
    return row
