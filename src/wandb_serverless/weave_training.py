"""Continuous training from Weave: many machines export rollouts, one trainer (or several) reads
them, and each rollout trains at most once, across restarts and beside other trainers.

How it holds, with nothing but Weave between the trainers (no lock service):

1. **Marks in Weave.** A trained rollout's root call gets ``wandb_serverless.trained`` feedback
   (the step it trained in): every reader skips it from then on, on any machine.
2. **Claims.** Before training, a trainer adds ``wandb_serverless.claim`` feedback to the
   rollouts it picked, then reads their feedback back. The earliest live claim (by the
   server's ``created_at``, then the feedback id) wins; each trainer trains only the
   rollouts it won. Two trainers that pick the same rollouts both see the same winner.
   A claim without a mark expires after ``lease_s`` (its trainer died): anyone may take it.
3. **A local journal** (``state_file``) carries the trainer's name (its claims stay its own
   across restarts), a read watermark, and the rollouts of the step in flight with the
   model's step before it. After a crash, the trainer compares that step with the model's
   latest: a checkpoint that appeared means the job ran, so the rollouts are marked, never
   trained again; otherwise they are trained now.

The window left: a crash after the training job was created but before its checkpoint exists
(the job still running when the trainer restarts) retrains those rollouts. The journal makes
this detectable (``pending`` in the state file), not impossible.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wandb_serverless.rollouts.weave_source import WeaveRollout, WeaveRollouts, as_groups
from wandb_serverless.training import TrainableModel, TrainResult
from wandb_serverless.trajectory import TrajectoryGroup

log = logging.getLogger(__name__)

CLAIM = "wandb_serverless.claim"
TRAINED = "wandb_serverless.trained"
UTC = datetime.UTC


def _created(feedback: dict[str, Any]) -> datetime.datetime:
    value = feedback.get("created_at")
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime.datetime):
        return datetime.datetime.max.replace(tzinfo=UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def owner(feedback: list[dict[str, Any]], lease_s: float) -> str | None:
    """The trainer whose claim on a rollout is live and earliest; None if none is."""
    cutoff = datetime.datetime.now(UTC) - datetime.timedelta(seconds=lease_s)
    claims = [f for f in feedback if f.get("feedback_type") == CLAIM and _created(f) >= cutoff]
    if not claims:
        return None
    first = min(claims, key=lambda f: (_created(f), str(f.get("id"))))
    return str((first.get("payload") or {}).get("trainer"))


def trained(feedback: list[dict[str, Any]]) -> bool:
    return any(f.get("feedback_type") == TRAINED for f in feedback)


class WeaveTrainer:
    """``WeaveTrainer(model, WeaveRollouts("entity/project")).run()``: trains ``model`` on every
    rollout exported to the project, each once.

    ``min_group_size``: groups with fewer rollouts wait for more (a group's advantages need
    several). ``config``: the RL jobs' ``experimental_config``. ``train``: what one step does
    with its groups (default ``model.train_rl``). ``lookback_s``: how far before the read
    watermark each poll reads again, for rollouts that reach Weave late.
    """

    def __init__(
        self,
        model: TrainableModel | None,
        source: WeaveRollouts,
        *,
        state_file: str | Path = ".wandb-serverless/weave-trainer.json",
        min_group_size: int = 2,
        lease_s: float = 3600.0,
        lookback_s: float = 600.0,
        config: dict[str, Any] | None = None,
        train: Callable[[list[TrajectoryGroup]], TrainResult] | None = None,
        latest_step: Callable[[], int] | None = None,
    ) -> None:
        if model is None and (train is None or latest_step is None):
            raise ValueError("pass a model, or both train and latest_step")
        if min_group_size < 1:
            raise ValueError(f"min_group_size must be at least 1, not {min_group_size}")
        self.source = source
        self.min_group_size = min_group_size
        self.lease_s = lease_s
        self.lookback_s = lookback_s
        self._train = train or (lambda groups: model.train_rl(groups, config))  # type: ignore[union-attr]
        self._latest_step = latest_step or model.latest_step  # type: ignore[union-attr]
        self.state_file = Path(state_file)
        self.state = self._load()
        self.steps: list[TrainResult] = []
        self._waiting_since: datetime.datetime | None = None

    @property
    def name(self) -> str:
        return str(self.state["name"])

    def __repr__(self) -> str:
        return f"WeaveTrainer({self.source.project!r}, name={self.name!r})"

    # -- the journal -------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if self.state_file.is_file():
            try:
                state = json.loads(self.state_file.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"unreadable trainer state {self.state_file}: {exc}") from exc
            if not isinstance(state, dict) or not state.get("name"):
                raise ValueError(f"trainer state {self.state_file} has no name")
            return state
        return {"name": f"trainer-{uuid.uuid4().hex[:12]}", "since": None, "pending": None}

    def _save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.state_file)

    # -- one step ----------------------------------------------------------------------------

    def _feedback(self, call_ids: list[str], kind: str, payload: dict[str, Any]) -> None:
        client = self.source.client
        project = self.source.project
        batch = [
            {
                "project_id": project,
                "weave_ref": f"weave:///{project}/call/{call_id}",
                "feedback_type": kind,
                "payload": payload,
            }
            for call_id in call_ids
        ]
        for start in range(0, len(batch), 500):
            client.server.feedback_create_batch({"batch": batch[start : start + 500]})

    def _settle(self) -> None:
        """A step that was in flight when the trainer stopped: marked if it trained."""
        pending = self.state.get("pending")
        if not pending:
            return
        step = self._latest_step()
        if step > pending["step_before"]:
            log.warning("a step finished before the trainer stopped: marking its rollouts")
            self._feedback(pending["calls"], TRAINED, {"trainer": self.name, "step": step})
        self.state["pending"] = None
        self._save()

    def available(self) -> list[WeaveRollout]:
        """Rollouts no trainer has trained or holds a live claim on (this one's claims aside),
        in groups of at least ``min_group_size``."""
        since = self.state.get("since")
        start = None
        if since is not None:
            start = datetime.datetime.fromisoformat(since) - datetime.timedelta(
                seconds=self.lookback_s
            )
        free = []
        for rollout in self.source.rollouts(since=start):
            if trained(rollout.feedback):
                continue
            holder = owner(rollout.feedback, self.lease_s)
            if holder is None or holder == self.name:
                free.append(rollout)
        sizes: dict[str, int] = {}
        for rollout in free:
            group = str(rollout.trajectory.metadata.get("group"))
            sizes[group] = sizes.get(group, 0) + 1
        ready = [
            r
            for r in free
            if r.trajectory.metadata.get("group") is not None
            and sizes[str(r.trajectory.metadata["group"])] >= self.min_group_size
        ]
        chosen = {r.call_id for r in ready}
        waiting = [r.started_at for r in free if r.call_id not in chosen and r.started_at]
        self._waiting_since = min(waiting) if waiting else None
        return ready

    def step(self) -> TrainResult | None:
        """Claim what is available, train on what this trainer won, mark it trained. None
        when there was nothing to train."""
        self._settle()
        picked = self.available()
        if not picked:
            return None
        token = uuid.uuid4().hex
        ids = [r.call_id for r in picked]
        self._feedback(ids, CLAIM, {"trainer": self.name, "claim": token})
        won = [
            r
            for r in self.source.rollouts(call_ids=ids)
            if not trained(r.feedback) and owner(r.feedback, self.lease_s) == self.name
        ]
        if not won:
            return None
        won_ids = [r.call_id for r in won]
        self.state["pending"] = {"calls": won_ids, "step_before": self._latest_step()}
        self._save()
        result = self._train(as_groups(won))
        self._feedback(won_ids, TRAINED, {"trainer": self.name, "step": result.step})
        # the next reads start here (less lookback_s): past what trained, not past what waits
        times = [r.started_at for r in won if r.started_at is not None]
        if self._waiting_since is not None:
            times = [min([*times, self._waiting_since])]
        if times:
            self.state["since"] = max(times).isoformat()
        self.state["pending"] = None
        self._save()
        self.steps.append(result)
        return result

    def run(
        self, *, poll_s: float = 30.0, max_steps: int | None = None, idle_polls: int | None = None
    ) -> list[TrainResult]:
        """Poll every ``poll_s`` seconds and train whatever arrived; stops after ``max_steps``
        steps or ``idle_polls`` polls in a row with nothing to train (None: never)."""
        idle = 0
        while max_steps is None or len(self.steps) < max_steps:
            if self.step() is None:
                idle += 1
                if idle_polls is not None and idle >= idle_polls:
                    break
                time.sleep(poll_s)
            else:
                idle = 0
        return self.steps
