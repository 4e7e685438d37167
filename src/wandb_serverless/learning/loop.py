"""The learning loop: sample groups of rollouts, train, evaluate, promote, report; sampling for
the next step overlaps the training of this one (within ``max_steps_off_policy``); a stopped
loop resumes from its journal. See ``LearningLoop``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

from wandb_serverless.aliases import served_aliases
from wandb_serverless.api import NotFoundError, TrainingJobFailedError
from wandb_serverless.learning.journal import Journal, LoopState, exclusive, load_state
from wandb_serverless.learning.report import StepReport, estimate_price
from wandb_serverless.learning.sampling import (
    Evaluation,
    GroupScorer,
    Runner,
    Sampler,
    StepSample,
    evaluate,
    trained_tokens,
)
from wandb_serverless.learning.sampling import RolloutFn as RolloutFn
from wandb_serverless.learning.settings import check_settings
from wandb_serverless.models import CheckpointRef
from wandb_serverless.rollouts.credit import role_groups
from wandb_serverless.rollouts.store import RolloutStore
from wandb_serverless.training import TrainableModel, trainable_groups
from wandb_serverless.trajectory import TrajectoryGroup

log = logging.getLogger(__name__)
MAX_FAILED_JOBS = 3  # training jobs failing in a row stop the loop (the service is down)
RESTARTED = "restarted while this job was running"  # the local backend's message


def decide(score: float | None, served: float | None, tolerance: float) -> tuple[bool, str]:
    """Promote a checkpoint scored ``score`` over the one served (scored ``served`` on the same
    scenarios and seeds)? Yes unless it is worse by more than ``tolerance``."""
    if score is None:
        return False, "its evaluation failed: every rollout raised or timed out"
    if served is None:
        return True, "nothing was served before"
    if score >= served - tolerance - 1e-9:
        return True, f"{score:.3f} >= {served:.3f} - {tolerance:g}"
    return False, f"{score:.3f} < {served:.3f} - {tolerance:g}"


def group_policy(group: TrajectoryGroup) -> int:
    """The oldest policy step a group's trajectories were sampled from (0 if unknown)."""
    steps = [t.initial_policy_version or 0 for t in group.trajectories]
    return min(steps) if steps else 0


def fresh_groups(
    groups: list[TrajectoryGroup], base: int, max_steps_off_policy: int
) -> tuple[list[TrajectoryGroup], int]:
    """The groups sampled at most ``max_steps_off_policy`` steps before checkpoint ``base``
    (the one the job trains on), and how many were older (dropped)."""
    fresh = [g for g in groups if base - group_policy(g) <= max_steps_off_policy]
    return fresh, len(groups) - len(fresh)


class LearningLoop:
    """Leave it learning: ``LearningLoop(model, rollout_fn, train_scenarios=...,
    eval_scenarios=...).run(steps=10)``.

    ``rollout_fn(scenario, sampling)`` runs your agent (any framework) once, building its
    chat model from ``sampling.model``, and returns the reward. Each step samples
    ``groups_per_step`` groups of ``group_size`` rollouts of training scenarios (more rounds
    while fewer than ``min_trainable_groups`` groups have rewards that differ, at most
    ``max_rounds``), trains one RL step, evaluates the new checkpoint on ``eval_scenarios``
    (``eval_samples`` seeded rollouts each: the same seeds for every checkpoint), and serves it
    as ``:{alias}`` only if its score is not worse than the served checkpoint's by more than
    ``tolerance``. Agents that should follow only promoted checkpoints build their model from
    ``loop.served_ref``; ``on_step`` (a callable) gets each step's ``StepReport``. With
    ``role``, the loop trains that role's turns only (a multi-role agent: one loop a role);
    step rewards train as returns discounted by ``step_discount`` a turn (``rollouts.credit``).

    While a step trains, the next one samples from the newest checkpoint (``sample_from=
    "latest"``) or the served one (``"promoted"``, when it is within ``max_steps_off_policy``
    of the newest); a group sampled more than ``max_steps_off_policy`` steps before the
    checkpoint it would train on is dropped and counted (0: sample, then train, in turn).
    Everything the loop decides goes to ``state_dir/history.jsonl`` first; run it again
    after any stop and it continues from its last finished step.

    After the gate rejects the newest checkpoint, the next step trains on from it
    (``after_rejection="continue"``, as on W&B) or, on the local backend, from a
    copy of the served checkpoint (``"restore"``: ``TrainableModel.restore``), sampled from
    the served one too; sampling then waits for each checkpoint's evaluation (so restoring
    needs ``max_steps_off_policy=0``).
    """

    def __init__(
        self,
        model: TrainableModel,
        rollout_fn: RolloutFn,
        *,
        train_scenarios: Sequence[Any],
        eval_scenarios: Sequence[Any],
        group_size: int = 8,
        groups_per_step: int = 4,
        max_rounds: int = 3,
        min_trainable_groups: int = 1,
        eval_fn: RolloutFn | None = None,
        eval_samples: int = 1,
        eval_seed: int = 0,
        tolerance: float = 0.05,
        alias: str = "production",
        sample_from: Literal["latest", "promoted"] = "latest",
        max_steps_off_policy: int = 1,
        rollout_timeout: float | None = 600.0,
        max_concurrent_rollouts: int = 64,
        train_config: dict[str, Any] | None = None,
        score_group: GroupScorer | None = None,
        state_dir: str | Path = ".wandb-serverless/loop",
        store: RolloutStore | None = None,
        seed: int = 0,
        progress: bool = True,
        role: str | None = None,
        step_discount: float = 1.0,
        after_rejection: Literal["continue", "restore"] = "continue",
    ) -> None:
        check_settings(locals())
        self.model = model
        self.rollout_fn, self.eval_fn = rollout_fn, eval_fn or rollout_fn
        self.train_scenarios, self.eval_scenarios = list(train_scenarios), list(eval_scenarios)
        self.group_size, self.groups_per_step = group_size, groups_per_step
        self.max_rounds, self.min_trainable_groups = max_rounds, min_trainable_groups
        self.eval_samples, self.eval_seed, self.tolerance = eval_samples, eval_seed, tolerance
        self.alias, self.sample_from, self.max_off = alias, sample_from, max_steps_off_policy
        self.rollout_timeout, self.concurrency = rollout_timeout, max_concurrent_rollouts
        self.train_config, self.score_group, self.seed = train_config, score_group, seed
        self.progress = progress
        self.role, self.step_discount = role, step_discount
        self.after_rejection = after_rejection
        self.state_dir = Path(state_dir)
        self.journal = Journal(self.state_dir / "history.jsonl")
        self.store = store or RolloutStore(self.state_dir / "rollouts.db")
        self.reports: deque[StepReport] = deque(maxlen=1000)  # this process's latest steps
        self.on_step: Callable[[StepReport], Any] | None = None  # the demo prints its table
        self._aliases = served_aliases(model)
        if after_rejection == "restore" and model.hosted:
            raise ValueError(
                "after_rejection='restore' needs the local backend: W&B's training API has no "
                "field to choose the checkpoint a job trains on"
            )
        self._held = False
        self._baseline = 0  # what a fresh loop serves first: the alias's step, else the newest
        self.state: LoopState = load_state(self.journal)

    def __repr__(self) -> str:
        return f"LearningLoop({self.model!r}, state_dir={str(self.state_dir)!r})"

    # -- what agents serve -------------------------------------------------------------------

    @property
    def served_ref(self) -> str:
        """``...:{alias}`` once the alias is set on the server; the base model before that."""
        if self._aliases.get(self.alias) is None:
            return self.model.base_model
        return self.model.ref_for(self.alias)

    def promote(self, step: int) -> str:
        """Serve checkpoint ``step`` now, whatever its evaluation (recorded as by hand)."""
        with self._exclusive():
            self.state = load_state(self.journal)
            self.model.promote(step, self.alias)  # checks the step exists first
            self._record("promoted", checkpoint=int(step), by="hand", score=self.state.score(step))
            return self.model.ref_for(self.alias)

    def rollback(self) -> int:
        """Serve the checkpoint promoted before the one served now; returns its step."""
        with self._exclusive():
            self.state = load_state(self.journal)
            if not self.state.earlier or self.state.promoted is None:
                raise ValueError(
                    f"nothing to roll back to: {self.journal.path} has no earlier promotion"
                )
            current, target = self.state.promoted, self.state.earlier[-1]
            self._aliases.set(self.alias, target)
            self._record("rollback", **{"from": current, "to": target, "by": "hand"})
            return target

    def history(self) -> list[dict[str, Any]]:
        """Every record of the journal (``state_dir/history.jsonl``), oldest first."""
        return list(self.journal.records())

    # -- running -----------------------------------------------------------------------------

    def run(self, steps: int) -> list[StepReport]:
        """Run until ``steps`` steps are done in all (a restarted loop continues where the
        last one stopped). Returns this run's step reports."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(steps))
        raise RuntimeError(
            "LearningLoop.run was called inside an event loop: await loop.arun(steps)"
        )

    async def arun(self, steps: int) -> list[StepReport]:
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a whole number >= 0, not {steps!r}")
        with self._exclusive():
            self.state = load_state(self.journal)
            if self.state.run_id is None:
                self._record("start", run_id=uuid.uuid4().hex[:8], settings=self._settings())
            else:
                self._record("resume", done_through=self.state.done_through)
            first = len(self.reports)
            await self._reconcile()
            try:
                await self._pipeline(self.state.done_through + 1, steps)
            except BaseExceptionGroup as group:  # the task group's: raise what went wrong
                raise _first_error(group) from None
            return list(self.reports)[first:]

    async def _pipeline(self, first: int, last: int) -> None:
        runner = Runner(self.rollout_fn, self.rollout_timeout, self.concurrency)
        sampler = Sampler(
            runner, self.store, self.train_scenarios, str(self.state.run_id), self.seed,
            self.groups_per_step, self.group_size, self.max_rounds, self.score_group,
            self.min_trainable_groups,
        )  # fmt: skip
        self._eval_runner = Runner(self.eval_fn, self.rollout_timeout, self.concurrency)
        self._progress = asyncio.Condition()
        samples: asyncio.Queue[StepSample] = asyncio.Queue()
        checks: asyncio.Queue[tuple[int, StepReport | None] | None] = asyncio.Queue()
        if self.state.promoted is None:  # a fresh loop: what is served now is the baseline
            checks.put_nowait((self._baseline, None))
        elif self.state.promoted_score is None:  # promoted by hand, never scored
            checks.put_nowait((self.state.promoted, None))
        for checkpoint in self.state.undecided:
            checks.put_nowait((checkpoint, None))  # trained before a stop, never judged
        async with asyncio.TaskGroup() as tasks:
            sampling = tasks.create_task(self._sample_steps(sampler, first, last, samples))
            tasks.create_task(self._judge_all(checks))
            for step in range(first, last + 1):
                await self._train(step, await samples.get(), checks)
            await checks.put(None)
            await sampling

    async def _sample_steps(
        self, sampler: Sampler, first: int, last: int, out: asyncio.Queue[StepSample]
    ) -> None:
        for step in range(first, last + 1):
            async with self._progress:  # never sample further ahead than the bound allows
                await self._progress.wait_for(partial(self._may_sample, step))
            recorded = self.state.sampled.get(step)
            if recorded is not None:  # sampled before a stop: the store has its groups
                sample = StepSample.from_record(recorded, self.store)
            else:
                policy = self._sampling_policy()
                sample = await sampler.sample(step, policy, self.model.ref_at(policy))
                self._record("sampled", **sample.record())
            await out.put(sample)

    def _may_sample(self, step: int) -> bool:
        """Whether sampling ``step`` stays within ``max_off`` steps of the last trained one
        (and, when restoring after rejections, comes after every checkpoint's judgement)."""
        if self.after_rejection == "restore" and self.state.undecided:
            return False
        return self.state.done_through >= step - 1 - self.max_off

    def _restore_to(self) -> int | None:
        """The served checkpoint the next step goes back to (the newest was rejected), or None."""
        state, promoted = self.state, self.state.promoted
        if self.after_rejection != "restore" or not promoted:  # the base model has no copy
            return None
        return promoted if state.last_rejected == state.latest else None

    def _sampling_policy(self) -> int:
        latest, promoted = self.state.latest, self.state.promoted
        restore = self._restore_to()
        if restore is not None:
            return restore
        if self.sample_from == "promoted" and promoted is not None:
            if promoted >= latest - self.max_off:
                return promoted
            log.info("the served step %d is over %d steps behind step %d: sampling from the newest",
                     promoted, self.max_off, latest)  # fmt: skip
        return latest

    async def _train(self, step: int, sample: StepSample, checks: asyncio.Queue) -> None:
        report = StepReport.sampled(step, sample.record())
        base = await asyncio.to_thread(self.model.latest_step)
        source = self._restore_to()
        if source is not None:
            base = await asyncio.to_thread(self.model.restore, source)
            self._record("restored", step=step, checkpoint=base, source=source,
                         rejected=self.state.last_rejected)  # fmt: skip
        policy = self.state.trained_on(base)  # a copy holds its source's weights
        report.restored_from = policy if policy != base else None
        fresh, report.dropped_stale_groups = fresh_groups(sample.groups, policy, self.max_off)
        if self.role is not None:  # the turns of this loop's role; the others are context
            fresh = role_groups(fresh, self.role)
        kept, _ = trainable_groups(fresh, discount=self.step_discount)
        report.groups, report.trainable_groups = len(sample.groups), len(kept)
        if not kept:
            reason = "no group's rewards differ" if fresh else "every group was too far off-policy"
            self._record("skipped", step=step, reason=reason)
            return await self._finish(report, "skipped", reason)
        names = [g.metadata.get("group") for g in kept]
        self._record("training", step=step, base_step=base, groups=names)
        try:
            job_id = await asyncio.to_thread(self.model.submit_rl, kept, self.train_config)
            self._record("job", step=step, job_id=job_id)
            result = await asyncio.to_thread(self.model.wait, job_id)
        except TrainingJobFailedError as exc:
            self._record("train_failed", step=step, error=exc.error_message)
            if self.state.failures >= MAX_FAILED_JOBS:
                raise
            return await self._finish(report, "train_failed", exc.error_message)
        report.training_s = result.metrics.get("time/step_trainer_s", 0.0)
        report.tokens_trained = trained_tokens(kept)
        self._record("trained", step=step, checkpoint=result.step, job_id=job_id,
                     tokens_trained=report.tokens_trained, training_s=round(report.training_s, 3))  # fmt: skip
        report.outcome, report.checkpoint = "trained", result.step
        await self._notify()
        await checks.put((result.step, report))

    async def _finish(self, report: StepReport, outcome: str, reason: str) -> None:
        report.outcome, report.reason = outcome, reason
        self._report(report)
        await self._notify()

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _judge_all(self, checks: asyncio.Queue) -> None:
        while (item := await checks.get()) is not None:
            await self._judge(*item)

    async def _judge(self, checkpoint: int, report: StepReport | None) -> None:
        """Evaluate a checkpoint and decide whether it is served (in the order trained)."""
        served = self.state.promoted
        if served is not None and self.state.promoted_score is None:
            await self._evaluate(served)  # a hand's promotion, never scored: score it first
        if served == checkpoint:
            return
        evaluation = await self._evaluate(checkpoint)
        if served is None:  # the first check of a fresh loop: what is served at its start
            self._record("promoted", checkpoint=checkpoint, by="baseline", score=evaluation.score)
            await self._serve(checkpoint)
            return
        promote, reason = decide(evaluation.score, self.state.promoted_score, self.tolerance)
        fields = {"checkpoint": checkpoint, "score": evaluation.score, "reason": reason,
                  "served_step": served, "served_score": self.state.promoted_score,
                  "tolerance": self.tolerance, "by": "loop"}  # fmt: skip
        self._record("promoted" if promote else "rejected", **fields)
        if promote:
            await self._serve(checkpoint)
        else:
            log.warning(
                "checkpoint %d is not served: %s (still serving step %s)",
                checkpoint,
                reason,
                served,
            )
        if report is not None:
            report.decision, report.reason = ("promoted" if promote else "rejected"), reason
            self._report(report, evaluation)
        await self._notify()  # sampling may wait for this judgement

    async def _evaluate(self, checkpoint: int) -> Evaluation:
        evaluation = await evaluate(
            self._eval_runner, self.eval_scenarios, self.eval_samples, self.eval_seed,
            checkpoint, self.model.ref_at(checkpoint),
        )  # fmt: skip
        self._record("evaluated", **evaluation.record())
        return evaluation

    async def _serve(self, step: int) -> None:
        if step == 0 and self.model.hosted:
            return  # W&B serves aliases on trained checkpoints only: the base model by name
        await asyncio.to_thread(self._aliases.set, self.alias, step)

    # -- restarting --------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """After a stop: settle the job in flight (trained, or to train again: never twice),
        and put the alias back where the journal says it is."""
        flight = self.state.in_flight
        self.state.latest = max(self.state.latest, await asyncio.to_thread(self.model.latest_step))
        if self.state.promoted is None:  # a fresh loop on a model maybe trained before
            served = await asyncio.to_thread(self._aliases.get, self.alias)
            self._baseline = self.state.latest if served is None else served
        if flight is not None:
            trained = await self._settle(flight.step, flight.base_step, flight.job_id)
            if trained is not None:
                self._record(
                    "trained",
                    step=flight.step,
                    checkpoint=trained,
                    job_id=flight.job_id,
                    resumed=True,
                )
            else:
                self.state.in_flight = None  # train its groups again: they never trained
        served = self.state.promoted
        if served is None or (served == 0 and self.model.hosted):
            return
        if await asyncio.to_thread(self._aliases.get, self.alias) != served:
            await self._serve(served)

    async def _settle(self, step: int, base: int, job_id: str | None) -> int | None:
        """The checkpoint the job of ``step`` made, or None if it made none."""
        if job_id is not None:
            try:
                return (await asyncio.to_thread(self.model.wait, job_id)).step
            except TrainingJobFailedError as exc:
                if RESTARTED not in exc.error_message:
                    self._record("train_failed", step=step, error=exc.error_message)
                return None
            except NotFoundError:
                pass
        latest = await asyncio.to_thread(self.model.latest_step)
        return latest if latest > base else None

    # -- bookkeeping -------------------------------------------------------------------------

    def _record(self, event: str, **fields: Any) -> dict[str, Any]:
        record = self.journal.append(event, **fields)
        self.state.apply(record)
        return record

    def _report(self, report: StepReport, evaluation: Evaluation | None = None) -> None:
        if evaluation is not None:
            eval_fields = evaluation.record()
            report.eval_score, report.evaluating_s = evaluation.score, evaluation.seconds
            report.eval_prompt_tokens = eval_fields["eval_prompt_tokens"]
            report.eval_completion_tokens = eval_fields["eval_completion_tokens"]
            report.meter += eval_fields["meter"]
        report.served_step, report.served_score = self.state.promoted, self.state.promoted_score
        if self.model.hosted:
            path = CheckpointRef.of(self.model.entity, self.model.project, self.model.name).path
            report.price_usd = estimate_price(report.meter, path, self.model.base_model)
        self._record("step", **report.record())
        self.reports.append(report)
        metrics_step = report.checkpoint if report.checkpoint is not None else self.state.latest
        self.model.log_metrics(metrics_step, report.metrics(), kind="loop")
        if self.progress:
            print(report.line(self.tolerance), flush=True)
        if self.on_step is not None:
            self.on_step(report)

    def _settings(self) -> dict[str, Any]:
        return {
            "model": str(self.model), "alias": self.alias, "group_size": self.group_size,
            "groups_per_step": self.groups_per_step, "max_rounds": self.max_rounds,
            "min_trainable_groups": self.min_trainable_groups,
            "eval_scenarios": len(self.eval_scenarios), "eval_samples": self.eval_samples,
            "tolerance": self.tolerance, "max_steps_off_policy": self.max_off,
            "sample_from": self.sample_from, "seed": self.seed, "role": self.role,
            "step_discount": self.step_discount, "after_rejection": self.after_rejection,
        }  # fmt: skip

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The state directory's lock (once per process: promote() inside a run holds it)."""
        if self._held:
            yield
            return
        with exclusive(self.state_dir):
            self._held = True
            try:
                yield
            finally:
                self._held = False


def _first_error(group: BaseExceptionGroup) -> BaseException:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_error(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]
