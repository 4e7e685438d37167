"""A learning loop killed (``kill -9``) while it samples, while its RL job runs and while it
evaluates, then started again: it continues from its last finished step, trains no step twice,
loses no finished rollout and serves what it served. The loop runs in its own process against
the session's local backend (which outlives it, as W&B would)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from support.fixtures import REPO

from wandb_serverless.learning.journal import Journal

pytestmark = pytest.mark.slow
AGENT = REPO / "tests" / "support" / "loop_agent.py"


class Loop:
    """The loop's process, its journal and what the server says about its model."""

    def __init__(self, backend, tmp_path: Path, **env: str) -> None:
        self.backend, self.dir, self.name = backend, tmp_path / "loop", f"r-{uuid.uuid4().hex[:6]}"
        self.env = {**os.environ, "LOOP_BASE_URL": backend.base_url,
                    "LOOP_API_KEY": backend.api_key, **env}  # fmt: skip
        self.journal = Journal(self.dir / "history.jsonl")

    def start(self, steps: int) -> subprocess.Popen:
        command = [sys.executable, str(AGENT), str(self.dir), self.name, str(steps)]
        return subprocess.Popen(
            command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def kill_when(self, process: subprocess.Popen, condition, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not condition(list(self.journal.records())):
            if process.poll() is not None:
                raise AssertionError(f"the loop ended first:\n{process.stdout.read().decode()}")
            assert time.monotonic() < deadline, "the phase to stop in never came"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def finish(self, steps: int) -> str:
        done = subprocess.run(
            [sys.executable, str(AGENT), str(self.dir), self.name, str(steps)],
            env=self.env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def events(self) -> list[dict]:
        return list(self.journal.records())

    def _get(self, path: str):
        headers = {"Authorization": f"Bearer {self.backend.api_key}"}
        return httpx.get(self.backend.base_url + path, headers=headers).json()

    def model_id(self) -> str:
        return next(m["id"] for m in self._get("/preview/models") if m["name"] == self.name)

    def checkpoints(self) -> list[int]:
        page = self._get(f"/preview/models/{self.model_id()}/checkpoints?limit=100")
        return [c["step"] for c in page["data"]]

    def served(self) -> int | None:
        return self._get(f"/local/models/{self.model_id()}/aliases").get("production")


def has(event: str, **fields):
    return lambda records: any(
        r["event"] == event and all(r.get(k) == v for k, v in fields.items()) for r in records
    )


def trained_once(loop: Loop, steps: int) -> None:
    """Every step trained exactly once, each into its own checkpoint, and nothing else."""
    trained = [r for r in loop.events() if r["event"] == "trained"]
    assert sorted(r["step"] for r in trained) == list(range(1, steps + 1))
    assert (
        sorted(r["checkpoint"] for r in trained) == loop.checkpoints() == list(range(1, steps + 1))
    )


def stored(loop: Loop) -> dict[str, tuple[float, str]]:
    """The finished rollouts in the loop's store: id -> (when it was saved, its data)."""
    path = loop.dir / "rollouts.db"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as db:
        try:
            rows = db.execute("SELECT id, created, data FROM trajectories").fetchall()
        except sqlite3.OperationalError as exc:  # the file exists, its schema not yet
            if "no such table" in str(exc):
                return {}
            raise
    return {row[0]: (row[1], row[2]) for row in rows}


def test_killed_while_sampling_it_keeps_every_finished_rollout(backend, tmp_path):
    loop = Loop(backend, tmp_path, LOOP_SAMPLE_DELAY="0.4")
    process = loop.start(2)

    def some_rollouts_stored(records) -> bool:
        return (
            (loop.dir / "rollouts.db").exists()
            and len(stored(loop)) >= 3
            and not has("sampled")(records)
        )

    loop.kill_when(process, some_rollouts_stored)
    before = stored(loop)
    loop.finish(2)
    after = stored(loop)
    assert {k: after.get(k) for k in before} == before  # kept as saved, never sampled again
    sampled = next(r for r in loop.events() if r["event"] == "sampled" and r["step"] == 1)
    assert all(any(i.startswith(g + "-") for g in sampled["groups"]) for i in before)
    assert sampled["rollouts"] == 8 - len(before) or sampled["rounds"] > 1  # only the rest ran
    trained_once(loop, 2)


def test_killed_while_its_job_runs_it_follows_that_job_instead_of_training_again(backend, tmp_path):
    loop = Loop(backend, tmp_path)
    process = loop.start(2)
    loop.kill_when(process, lambda r: has("job", step=1)(r) and not has("trained", step=1)(r))
    job_id = next(r["job_id"] for r in loop.events() if r["event"] == "job")
    loop.finish(2)
    trained_once(loop, 2)
    first = next(r for r in loop.events() if r["event"] == "trained" and r["step"] == 1)
    assert first["job_id"] == job_id and first.get("resumed") is True


def test_killed_while_evaluating_it_serves_what_it_served_and_decides_once(backend, tmp_path):
    scores = json.dumps({"0": 0.5, "1": 0.8, "2": 0.1})  # checkpoint 2 must not be served
    loop = Loop(backend, tmp_path, LOOP_EVAL_DELAY="1.5", LOOP_SCORES=scores)
    process = loop.start(2)
    loop.kill_when(
        process,
        lambda r: has("trained", step=2)(r) and has("promoted", checkpoint=1)(r)
        and not has("evaluated", checkpoint=2)(r),
    )  # fmt: skip
    assert loop.served() == 1
    loop.finish(2)
    assert loop.served() == 1
    decisions = [(r["event"], r["checkpoint"]) for r in loop.events()
                 if r["event"] in ("promoted", "rejected")]  # fmt: skip
    assert decisions == [("promoted", 0), ("promoted", 1), ("rejected", 2)]
    trained_once(loop, 2)
