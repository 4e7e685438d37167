"""The loop's history: one JSON object per line, each written whole and fsynced before the loop
acts on it, and read back on restart. ``LoopState`` is what the records add up to; the loop
keeps only that in memory (bounded), never the records themselves.

Records (``event`` field): ``start`` (the run's id and settings), ``sampled`` (a step's groups
and the policy they came from), ``training`` (a job about to be created: the base step it
trains on), ``job`` (its ID), ``trained`` / ``skipped`` / ``train_failed``, ``evaluated``,
``promoted`` / ``rejected`` / ``rollback`` (every decision, by the loop or by hand),
``restored`` (the served checkpoint copied as the newest, to train on after a rejection),
``step`` (what a step cost).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_REMEMBERED = 256  # checkpoint scores and earlier promotions kept for rollbacks and gates


class LoopLockedError(RuntimeError):
    """Another process runs a loop on (or edits) this state directory."""


class Journal:
    """Append-only JSONL, fsynced per record; a line torn by a kill is ignored on reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        line = json.dumps(record, default=str) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            if handle.tell() and not self._ends_with_newline():
                handle.write("\n")  # after a torn line: keep this record on a line of its own
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def records(self) -> Iterator[dict[str, Any]]:
        """Every whole record, oldest first (read line by line: memory stays flat)."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a record torn by a kill: it never happened
                if isinstance(record, dict) and "event" in record:
                    yield record


@contextlib.contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold the state directory's lock (released by the OS if the process dies)."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = (directory / "loop.lock").open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LoopLockedError(
                f"another process is running a learning loop in {directory}; stop it first "
                "(promote and rollback by hand go through that loop, or wait for it to end)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


@dataclass
class InFlight:
    """A step whose job was about to be, or was, created, with no outcome recorded yet."""

    step: int
    base_step: int
    groups: list[str]
    job_id: str | None = None


@dataclass
class LoopState:
    """What the journal's records add up to."""

    run_id: str | None = None
    promoted: int | None = None
    promoted_score: float | None = None
    latest: int = 0  # the newest checkpoint the loop trained or saw
    done_through: int = 0  # the last step trained, skipped or failed
    sampled: dict[int, dict[str, Any]] = field(default_factory=dict)  # steps not yet trained
    in_flight: InFlight | None = None
    undecided: list[int] = field(default_factory=list)  # checkpoints trained, not yet judged
    scores: OrderedDict[int, float] = field(default_factory=OrderedDict)
    earlier: deque[int] = field(default_factory=lambda: deque(maxlen=MAX_REMEMBERED))
    failures: int = 0  # consecutive failed training jobs
    last_rejected: int | None = None  # the newest checkpoint the gate kept from agents
    last_copy: tuple[int, int] | None = None  # (copy, source) of the last restore

    def trained_on(self, base: int) -> int:
        """The checkpoint whose weights ``base`` holds: its source if it is the last copy."""
        if self.last_copy is not None and self.last_copy[0] == base:
            return self.last_copy[1]
        return base

    def score(self, step: int) -> float | None:
        return self.scores.get(step)

    def remember(self, step: int, score: float) -> None:
        self.scores[step] = score
        self.scores.move_to_end(step)
        while len(self.scores) > MAX_REMEMBERED:
            self.scores.popitem(last=False)

    def apply(self, record: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{record['event']}", None)
        if handler is not None:
            handler(record)

    def _on_start(self, r: dict[str, Any]) -> None:
        self.run_id = self.run_id or r["run_id"]

    def _on_sampled(self, r: dict[str, Any]) -> None:
        self.sampled[r["step"]] = r

    def _on_training(self, r: dict[str, Any]) -> None:
        self.in_flight = InFlight(r["step"], r["base_step"], list(r["groups"]))

    def _on_job(self, r: dict[str, Any]) -> None:
        if self.in_flight is not None and self.in_flight.step == r["step"]:
            self.in_flight.job_id = r["job_id"]

    def _finish_step(self, step: int) -> None:
        self.sampled.pop(step, None)
        self.in_flight = None
        self.done_through = max(self.done_through, step)

    def _on_trained(self, r: dict[str, Any]) -> None:
        self._finish_step(r["step"])
        self.latest = max(self.latest, r["checkpoint"])
        self.undecided.append(r["checkpoint"])
        self.failures = 0

    def _on_skipped(self, r: dict[str, Any]) -> None:
        self._finish_step(r["step"])

    def _on_train_failed(self, r: dict[str, Any]) -> None:
        self._finish_step(r["step"])
        self.failures += 1

    def _on_evaluated(self, r: dict[str, Any]) -> None:
        if r.get("score") is not None:
            self.remember(r["checkpoint"], r["score"])
            if r["checkpoint"] == self.promoted:
                self.promoted_score = r["score"]

    def _decided(self, step: int) -> None:
        self.undecided = [s for s in self.undecided if s != step]

    def _on_promoted(self, r: dict[str, Any]) -> None:
        self._decided(r["checkpoint"])
        if self.promoted is not None and self.promoted != r["checkpoint"]:
            self.earlier.append(self.promoted)
        self.promoted = r["checkpoint"]
        self.promoted_score = self.score(r["checkpoint"])
        self.latest = max(self.latest, r["checkpoint"])

    def _on_rejected(self, r: dict[str, Any]) -> None:
        self._decided(r["checkpoint"])
        self.last_rejected = max(self.last_rejected or 0, r["checkpoint"])

    def _on_restored(self, r: dict[str, Any]) -> None:
        self.latest = max(self.latest, r["checkpoint"])
        self.last_copy = (r["checkpoint"], r["source"])
        source_score = self.score(r["source"])
        if source_score is not None:  # the same weights: the same score
            self.remember(r["checkpoint"], source_score)

    def _on_rollback(self, r: dict[str, Any]) -> None:
        if self.earlier and self.earlier[-1] == r["to"]:
            self.earlier.pop()
        self.promoted = r["to"]
        self.promoted_score = self.score(r["to"])


def load_state(journal: Journal) -> LoopState:
    state = LoopState()
    for record in journal.records():
        state.apply(record)
    return state
