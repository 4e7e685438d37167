"""Running the user's rollout function: one rollout each (recorded, with a timeout, its failure
counted rather than raised), a step's groups planned from the loop's seed (so a restarted loop
plans the same rollouts and samples only those not yet stored), and the held-out evaluation.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wandb_serverless.rollouts.recorder import Rollout
from wandb_serverless.rollouts.store import RolloutStore
from wandb_serverless.trajectory import Choice, TrajectoryGroup
from wandb_serverless.usage import Meter, judging, metered

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """What a rollout function gets besides its scenario.

    ``model`` is the reference to build the agent's chat model from (``ChatWandb(model=...)``,
    ``WandbLLM(model=...)``): a pinned checkpoint (``:stepN``; ``:step0`` is the base model),
    so every trajectory knows the policy it came from. ``seed`` makes the sampling
    reproducible; ``evaluation`` is True on held-out scenarios (sample as you serve there).
    ``rollout`` is the open rollout: calls made through ChatWandb / WandbLLM / the trace hooks
    are recorded into it; set ``rollout.reward`` or return the reward. ``group_seed`` is the
    same for every rollout of a group (draw from it what varies per group but not within one,
    such as a phrasing of the scenario); None in an evaluation.
    """

    model: str
    seed: int | None
    step: int
    policy_step: int
    evaluation: bool
    rollout: Rollout
    group_seed: int | None = None


RolloutFn = Callable[[Any, Sampling], Awaitable[float | None] | float | None]
GroupScorer = Callable[
    [TrajectoryGroup], Awaitable[TrajectoryGroup | None] | TrajectoryGroup | None
]


@dataclass
class Outcome:
    """What a batch of rollouts did: rewards of those that finished, failures counted."""

    rewards: list[float] = field(default_factory=list)
    failed: int = 0
    timed_out: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # "TypeError: ..." -> count (bounded)

    @property
    def rollouts(self) -> int:
        return len(self.rewards) + self.failed

    def fail(self, exc: BaseException) -> None:
        self.failed += 1
        if isinstance(exc, TimeoutError):
            self.timed_out += 1
        message = f"{type(exc).__name__}: {exc}"[:200]
        if message in self.errors or len(self.errors) < 8:
            self.errors[message] = self.errors.get(message, 0) + 1


class Runner:
    """Runs rollout functions, each inside its own rollout, at most ``concurrency`` at once."""

    def __init__(self, fn: RolloutFn, timeout: float | None, concurrency: int) -> None:
        self.fn = fn
        self.timeout = timeout
        self._slots = asyncio.Semaphore(concurrency)

    async def one(self, scenario: Any, run: Rollout, outcome: Outcome, **sampling: Any) -> None:
        """One rollout; its reward is recorded, or its failure (raised, timed out, a reward that
        is not a number) is counted and stored with the rollout. A stop from outside
        (cancellation) stores nothing: the rollout is sampled again after a restart."""
        async with self._slots:
            await run.__aenter__()
            try:
                reward = await asyncio.wait_for(
                    self._call(scenario, Sampling(rollout=run, **sampling)), self.timeout
                )
                run.reward = _as_reward(run.reward if reward is None else reward)
            except asyncio.CancelledError:
                run.abandon()
                raise
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    exc = TimeoutError(
                        f"the rollout took over {self.timeout:g} s (rollout_timeout)"
                    )
                outcome.fail(exc)
                if not isinstance(run.reward, int | float) or not math.isfinite(run.reward):
                    run.reward = 0.0  # a failed rollout's reward is never trained on
                await run.__aexit__(type(exc), exc, None)  # stored with its exception
                return
            await run.__aexit__(None, None, None)
            outcome.rewards.append(run.reward)

    async def _call(self, scenario: Any, sampling: Sampling) -> Any:
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(scenario, sampling)
        result = await asyncio.to_thread(self.fn, scenario, sampling)
        return await result if inspect.isawaitable(result) else result


def _as_reward(value: Any) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(
            f"the rollout function returned {value!r}: return the reward (a finite number), or "
            "None after setting sampling.rollout.reward"
        )
    return float(value)


@dataclass(frozen=True)
class PlannedGroup:
    name: str
    scenario_index: int
    seeds: tuple[int, ...]
    group_seed: int = 0

    def rollout_id(self, sample: int) -> str:
        return f"{self.name}-{sample}"


def plan_round(
    run_id: str, seed: int, step: int, round_: int, scenarios: int, groups: int, group_size: int
) -> list[PlannedGroup]:
    """The groups of one sampling round: which scenarios, and each rollout's sampling seed.
    A function of its arguments only (``random.Random`` seeded by a string is the same in
    every process), so a restarted loop plans exactly what it planned before."""
    rng = random.Random(f"{seed}:{step}:{round_}")
    if groups <= scenarios:
        indices = rng.sample(range(scenarios), groups)
    else:
        indices = [rng.randrange(scenarios) for _ in range(groups)]
    return [
        PlannedGroup(
            f"{run_id}-s{step}-r{round_}-g{g}",
            index,
            tuple(rng.randrange(1 << 30) for _ in range(group_size)),
            rng.randrange(1 << 30),
        )
        for g, index in enumerate(indices)
    ]


@dataclass
class StepSample:
    """A step's sampled groups (the store holds them), and what sampling them cost."""

    step: int
    policy_step: int
    names: list[str]
    rounds: int
    outcome: Outcome
    seconds: float
    meter: Meter
    groups: list[TrajectoryGroup] = field(default_factory=list)

    @classmethod
    def from_record(cls, record: dict[str, Any], store: RolloutStore) -> StepSample:
        """A step sampled before a stop, from its journal record and the store."""
        outcome = Outcome(
            failed=record.get("failed_rollouts", 0), timed_out=record.get("timed_out", 0)
        )
        names = list(record["groups"])
        sample = cls(record["step"], record["policy_step"], names, record.get("rounds", 1),
                     outcome, record.get("sampling_s", 0.0), Meter(), store.groups(names=names))  # fmt: skip
        outcome.rewards = [t.reward for g in sample.groups for t in g.trajectories]
        return sample

    def record(self) -> dict[str, Any]:
        """The journal's ``sampled`` record."""
        model, judge = self.meter.total("model"), self.meter.total("judge")
        rewards = self.outcome.rewards
        return {
            "step": self.step,
            "policy_step": self.policy_step,
            "groups": self.names,
            "rounds": self.rounds,
            "rollouts": self.outcome.rollouts,
            "failed_rollouts": self.outcome.failed,
            "timed_out": self.outcome.timed_out,
            "errors": self.outcome.errors,
            "train_reward": sum(rewards) / len(rewards) if rewards else None,
            "prompt_tokens": model.prompt_tokens,
            "completion_tokens": model.completion_tokens,
            "judge_calls": judge.calls,
            "judge_tokens": judge.prompt_tokens + judge.completion_tokens,
            "sampling_s": round(self.seconds, 3),
            "meter": _meter_rows(self.meter),
        }


def _meter_rows(meter: Meter) -> list[list[Any]]:
    return [
        [k, m, c.calls, c.prompt_tokens, c.completion_tokens] for (k, m), c in meter.counts.items()
    ]


@dataclass
class Sampler:
    """Samples one step's groups: rounds of ``groups_per_step`` groups until
    ``min_trainable_groups`` groups have rewards that differ (at most ``max_rounds``: DAPO's
    dynamic sampling, bounded), skipping rollouts the store already holds."""

    runner: Runner
    store: RolloutStore
    scenarios: Sequence[Any]
    run_id: str
    seed: int
    groups_per_step: int
    group_size: int
    max_rounds: int
    score_group: GroupScorer | None = None
    min_trainable_groups: int = 1

    async def sample(self, step: int, policy_step: int, model: str) -> StepSample:
        started, outcome, names = time.monotonic(), Outcome(), []
        groups: list[TrajectoryGroup] = []
        with metered() as meter:
            for round_ in range(self.max_rounds):
                planned = plan_round(
                    self.run_id, self.seed, step, round_, len(self.scenarios),
                    self.groups_per_step, self.group_size,
                )  # fmt: skip
                round_names = [g.name for g in planned]
                await self._run_round(planned, step, policy_step, model, outcome)
                names += round_names
                new_groups = self.store.groups(names=round_names)
                if self.score_group is not None:
                    new_groups = [await self._score(g) for g in new_groups]
                groups += new_groups
                if sum(g.has_signal() for g in groups) >= self.min_trainable_groups:
                    break
        seconds = time.monotonic() - started
        return StepSample(step, policy_step, names, round_ + 1, outcome, seconds, meter, groups)

    async def _run_round(
        self, planned: list[PlannedGroup], step: int, policy: int, model: str, outcome: Outcome
    ) -> None:
        done = self.store.rollout_ids(g.name for g in planned)
        jobs = []
        for group in planned:
            scenario = self.scenarios[group.scenario_index]
            for sample, seed in enumerate(group.seeds):
                rollout_id = group.rollout_id(sample)
                if rollout_id in done:
                    continue  # finished before a restart: kept, never sampled twice
                metadata: dict[str, Any] = {
                    "loop_step": step,
                    "scenario_index": group.scenario_index,
                    "seed": seed,
                }
                if isinstance(scenario, str | int | float | bool):
                    metadata["scenario"] = scenario
                run = Rollout(group=group.name, metadata=metadata, store=self.store, id=rollout_id)
                run.policy_step = policy
                jobs.append(
                    self.runner.one(
                        scenario,
                        run,
                        outcome,
                        model=model,
                        seed=seed,
                        step=step,
                        policy_step=policy,
                        evaluation=False,
                        group_seed=group.group_seed,
                    )
                )
        await asyncio.gather(*jobs)

    async def _score(self, group: TrajectoryGroup) -> TrajectoryGroup:
        """The group scorer's rewards (an LLM judge, say), written back to the store once: a
        restarted loop does not judge a group again."""
        if all(t.metrics.get("group_scored") for t in group.trajectories):
            return group
        scorer = self.score_group
        assert scorer is not None
        with judging():
            if inspect.iscoroutinefunction(scorer):
                scored = await scorer(group)
            else:  # a sync judge on a thread: the other rollouts keep sampling meanwhile
                scored = await asyncio.to_thread(scorer, group)
                if inspect.isawaitable(scored):
                    scored = await scored
        scored = scored if isinstance(scored, TrajectoryGroup) else group
        for trajectory in scored.trajectories:
            trajectory.metrics["group_scored"] = True
            self.store.update(trajectory)
        return scored


@dataclass
class Evaluation:
    checkpoint: int
    score: float | None  # None: every rollout failed
    outcome: Outcome
    seconds: float
    meter: Meter

    def record(self) -> dict[str, Any]:
        model = self.meter.total("model")
        return {
            "checkpoint": self.checkpoint,
            "score": self.score,
            "rollouts": self.outcome.rollouts,
            "failed_rollouts": self.outcome.failed,
            "timed_out": self.outcome.timed_out,
            "errors": self.outcome.errors,
            "eval_prompt_tokens": model.prompt_tokens,
            "eval_completion_tokens": model.completion_tokens,
            "evaluating_s": round(self.seconds, 3),
            "meter": _meter_rows(self.meter),
        }


async def evaluate(
    runner: Runner, scenarios: Sequence[Any], samples: int, seed: int, checkpoint: int, model: str
) -> Evaluation:
    """The mean reward on held-out scenarios, ``samples`` seeded rollouts each (seed
    ``seed + 1000 * i + j``: every checkpoint is scored on the same scenarios and seeds). A
    failed rollout scores 0 and is counted; nothing here is stored for training."""
    started, outcome = time.monotonic(), Outcome()
    with metered() as meter:
        jobs = []
        for i, scenario in enumerate(scenarios):
            for j in range(samples):
                run = Rollout(metadata={"evaluation": True, "scenario_index": i})
                run.policy_step = checkpoint
                jobs.append(
                    runner.one(
                        scenario,
                        run,
                        outcome,
                        model=model,
                        seed=seed + 1000 * i + j,
                        step=checkpoint,
                        policy_step=checkpoint,
                        evaluation=True,
                    )
                )
        await asyncio.gather(*jobs)
    total = outcome.rollouts
    score = sum(outcome.rewards) / total if outcome.rewards and total else None
    return Evaluation(checkpoint, score, outcome, time.monotonic() - started, meter)


def trained_tokens(groups: Sequence[TrajectoryGroup]) -> int:
    """The completion tokens an RL job trains on: every model turn with logprobs, in every
    history of every trajectory of these groups."""
    total = 0
    for group in groups:
        for trajectory in group.trajectories:
            for history in [trajectory, *trajectory.additional_histories]:
                for item in history.messages_and_choices:
                    if isinstance(item, Choice) and item.logprobs is not None:
                        ids = (item.model_extra or {}).get("token_ids")
                        total += len(ids) if ids else len(item.logprobs.content or [])
    return total
