"""Recording agent runs as trajectories, framework-agnostic.

``with rollout(group="q1") as r:`` (or ``async with``, or ``@rollout(...)`` on a function) opens
a rollout on a contextvar; trace hooks append every LLM call to it. Calls that extend the same
conversation merge into one history (ART's prefix rule); others (sub-agents, judges,
summarisers) become ``additional_histories``. When the block exits, ``r.trajectory`` is the
finished Trajectory, already committed to the store if one was given.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wandb_serverless.rollouts.guard import RECORDING_GUARD, WEAVE_GUARD, HookGuard
from wandb_serverless.rollouts.labels import (
    ObservedCall,
    _observed,
    end_observation,
    observe_call,
    role,
    step,
    turn_labels,
)
from wandb_serverless.rollouts.turns import (
    LLMCall,
    PendingTurn,
    build_trajectory,
    make_choice,
    merge_calls,
    recorded_choice,
)
from wandb_serverless.trajectory import NO_TURNS, Trajectory

if TYPE_CHECKING:
    from wandb_serverless.rollouts.store import RolloutStore

__all__ = [
    "RECORDING_GUARD",
    "WEAVE_GUARD",
    "HookGuard",
    "LLMCall",
    "ObservedCall",
    "PendingTurn",
    "Rollout",
    "current_rollout",
    "end_observation",
    "make_choice",
    "merge_calls",
    "observe_call",
    "on_rollout_open",
    "record_later",
    "record_turn",
    "recorded_choice",
    "role",
    "rollout",
    "step",
    "tokens_wanted",
    "turn_labels",
]

log = logging.getLogger(__name__)
_current: contextvars.ContextVar[Rollout | None] = contextvars.ContextVar(
    "wandb_rollout", default=None
)


_ON_OPEN: list[Callable[[], None]] = []
_SCALARS = (str, int, float, bool, type(None))  # the metadata a trajectory keeps


def on_rollout_open(fn: Callable[[], None]) -> None:
    """Run ``fn`` (cheap, idempotent) whenever a rollout is entered: how the openai SDK
    capture (``wandb_serverless.capture``) switches itself on, without the recorder importing
    it."""
    _ON_OPEN.append(fn)


#: The rollout open in this context, if any (the contextvar's own getter: no Python frame, and
#: capture asks it on every openai-client call).
current_rollout: Callable[[], Rollout | None] = _current.get


def tokens_wanted() -> bool:
    """Should a model call ask for exact tokens (logprobs and token ids)? Yes inside a rollout
    and while a trace hook watches the call: the trainer needs them."""
    return _current.get() is not None or _observed.get() is not None


def record_turn(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    message: dict[str, Any],
    *,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    token_ids: list[int] | None = None,
    prompt_token_ids: list[int] | None = None,
    model: str | None = None,
    role: str | None = None,
) -> bool:
    """Add a model turn (the request's messages and tools, the assistant ``message`` and its
    exact tokens; the ``model`` asked and the ``role`` it plays) to the rollout open in this
    context, and mark the watched call recorded. True if a rollout was open. Never raises:
    failures are counted on ``RECORDING_GUARD``."""
    if _current.get() is None:
        return False
    turn = (message, finish_reason, logprobs, token_ids, prompt_token_ids, model, role)
    return bool(RECORDING_GUARD.run(_record, messages, tools, *turn))


def _record(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    message: dict[str, Any],
    finish_reason: str | None,
    logprobs: dict[str, Any] | None,
    token_ids: list[int] | None,
    prompt_token_ids: list[int] | None,
    model: str | None,
    role: str | None,
) -> bool:
    choice = recorded_choice(
        message,
        finish_reason=finish_reason,
        logprobs=logprobs,
        token_ids=token_ids,
        prompt_token_ids=prompt_token_ids,
    )
    return _add(messages, tools, choice, model, role)


def record_later(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    convert: Callable[[], dict[str, Any]],
    *,
    model: str | None = None,
) -> bool:
    """``record_turn`` for a turn converted when first read (``recorded_choice`` data from
    ``convert()``, at the latest when the trajectory is built): what capturing an openai
    client's call records, so that the call itself pays for a reference, not a conversion.
    The labels (role, step) are taken now. True if a rollout was open; never raises."""
    if _current.get() is None:
        return False
    try:  # RECORDING_GUARD.run inlined: every captured call passes here
        return _add(messages, tools, PendingTurn(convert), model, None)
    except Exception as exc:
        RECORDING_GUARD.failed(exc)
        return False


def _add(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    choice: dict[str, Any] | PendingTurn,
    model: str | None,
    role: str | None,
) -> bool:
    run = _current.get()
    if run is None:
        return False
    run.add_call(LLMCall(messages, tools, choice, turn_labels(model, role)))
    observed = _observed.get()
    if observed is not None:
        observed.recorded = True
    return True


@dataclass
class Rollout:
    """One agent run being recorded. Set ``reward``, add ``metrics``, call ``log(...)``."""

    group: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    store: RolloutStore | None = None
    id: str = field(default_factory=lambda: os.urandom(16).hex())  # as uuid4().hex, cheaper
    reward: float = 0.0
    metrics: dict[str, float | int | bool] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    calls: list[LLMCall] = field(default_factory=list)
    tool_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    step_rewards: dict[int, float] = field(default_factory=dict)  # call index -> reward
    exception: dict[str, str] | None = None
    weave: Any = None  # True (the client weave.init made) or a WeaveClient: export on exit
    policy_step: int | None = None  # the checkpoint step sampled from (ART's policy version)
    _token: Any = field(default=None, repr=False)
    _final: Any = field(default=None, repr=False)  # the snapshot taken on exit
    _trajectory: Trajectory | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- what hooks call ---------------------------------------------------------------------

    def add_call(self, call: LLMCall) -> None:
        with self._lock:
            self.calls.append(call)

    def note_unrecorded_choices(self, count: int) -> None:
        """A call returned ``count`` choices beyond the first (``n > 1``): the first is the
        turn; the others are in no conversation. Counted in the trajectory's metadata
        (``unrecorded_choices``) and warned of once per rollout, never dropped silently."""
        with self._lock:
            before = self.metadata.get("unrecorded_choices", 0)
            self.metadata["unrecorded_choices"] = before + count
        if not before:
            log.warning(
                "rollout %s: a call returned %d choices (n > 1); the trajectory records the "
                "first as the turn, the other %d are counted in metadata['unrecorded_choices']",
                self.id,
                count + 1,
                count,
            )

    def add_tool_result(self, tool_call_id: str, content: str) -> None:
        with self._lock:
            self.tool_results[tool_call_id] = {
                "role": "tool",
                "tool_call_id": tool_call_id,
                "content": content,
            }

    def log(self, message: str) -> None:
        self.logs.append(str(message))

    # -- step rewards ------------------------------------------------------------------------

    def reward_turn(self, reward: float, turn: int = -1) -> None:
        """Reward one model turn, as it happens or afterwards: ``turn`` is its index among the
        rollout's calls in the order they were made (-1: the latest). Rewards of one turn add
        up. Training gives each turn the return from its own step on (``rollouts.credit``).
        A turn that does not exist, or came without exact tokens, is a ValueError."""
        value = _finite(reward)
        with self._lock:
            count = len(self.calls)
            if not isinstance(turn, int) or not -count <= turn < count:
                raise ValueError(
                    f"rollout {self.id} has {count} recorded model turn(s); there is no turn "
                    f"{turn!r}"
                )
            index = turn % count
            if not self.calls[index].exact():
                raise ValueError(
                    f"turn {index} of rollout {self.id} was recorded without exact tokens (its "
                    "model returned no logprobs), so no training can use its reward; reward the "
                    "run (rollout.reward) instead"
                )
            self.step_rewards[index] = self.step_rewards.get(index, 0.0) + value
        self._rewarded_late()

    def reward_tool_call(self, tool_call_id: str, reward: float) -> None:
        """Reward the turn that made the tool call ``tool_call_id`` (a ValueError if none did)."""
        with self._lock:
            found = [i for i, c in enumerate(self.calls) if tool_call_id in c.tool_call_ids()]
            known = [i for c in self.calls for i in c.tool_call_ids()]
        if not found:
            raise ValueError(
                f"no turn of rollout {self.id} made tool call {tool_call_id!r} "
                f"(its tool calls: {known or 'none'})"
            )
        self.reward_turn(reward, found[-1])

    def reward_step(self, step: str, reward: float) -> None:
        """Reward the step ``step`` (a ``step()`` block, a LangGraph node): credited to the
        last turn made in it. A step no turn was made in is a ValueError naming the steps."""
        with self._lock:
            steps = [c.labels.get("step") for c in self.calls]
        if step not in steps:
            named = sorted({s for s in steps if s})
            raise ValueError(
                f"no turn of rollout {self.id} was made in step {step!r} "
                f"(steps with turns: {named or 'none'})"
            )
        self.reward_turn(reward, len(steps) - 1 - steps[::-1].index(step))

    def _rewarded_late(self) -> None:
        """A reward given after the rollout finished: rebuild it and update the stored copy."""
        if self._final is None:
            return
        self._final = self._snapshot()
        self._trajectory = None
        if self.store is not None:
            self.store.update(self._built())

    # -- finishing ---------------------------------------------------------------------------

    @property
    def trajectory(self) -> Trajectory | None:
        """The finished Trajectory: None while the rollout is open, then what it held when it
        exited (built on first use: recording itself never waits on validation)."""
        if self._trajectory is None and self._final is not None:
            self._trajectory = build_trajectory(*self._final)
        return self._trajectory

    def _built(self) -> Trajectory:
        trajectory = self.trajectory
        assert trajectory is not None, "called after _complete"
        return trajectory

    def build(self) -> Trajectory:
        """The Trajectory so far."""
        return build_trajectory(*self._snapshot())

    def _snapshot(
        self,
    ) -> tuple[list[LLMCall], dict[str, dict[str, Any]], dict[str, Any], dict[int, float]]:
        """What the trajectory is built from: the calls, tool results, the other fields and
        the step rewards."""
        with self._lock:
            calls, results = list(self.calls), dict(self.tool_results)
            step_rewards = dict(self.step_rewards)
        metadata = {k: v for k, v in self.metadata.items() if isinstance(v, _SCALARS)}
        metadata["rollout_id"] = self.id
        if self.group is not None:
            metadata["group"] = self.group
        logs = list(self.logs)
        if self.exception:
            metadata["exception_type"] = self.exception["type"]
            logs.append(f"{self.exception['type']}: {self.exception['message']}")
        fields = {
            "reward": float(self.reward),
            "metrics": dict(self.metrics),
            "metadata": metadata,
            "logs": logs,
        }
        if self.policy_step is not None:
            fields["initial_policy_version"] = fields["final_policy_version"] = self.policy_step
        return calls, results, fields, step_rewards

    def _complete(self, exc: BaseException | None) -> None:
        if exc is not None and not isinstance(exc, GeneratorExit):
            self.exception = {
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(exc))[-4000:],
            }
        self._final = self._snapshot()
        if not self._final[0] and self.exception is None:
            _warn_no_turns(self.id)

    def finish(self, exc: BaseException | None = None) -> None:
        """End the rollout (``exc``: what ended it, if it failed): build, store, export.
        ``with rollout()`` calls it; trace hooks call it for rollouts they opened."""
        self._complete(exc)
        if self.store is not None:
            self.store.save(self._built(), group=self.group, exception=self.exception)
        if self.weave is not None:
            self._export()

    async def afinish(self, exc: BaseException | None = None) -> None:
        """``finish`` with the store's async save."""
        self._complete(exc)
        if self.store is not None:
            await self.store.asave(self._built(), group=self.group, exception=self.exception)
        if self.weave is not None:
            self._export()

    def _export(self) -> None:
        if self.weave is not False:
            from wandb_serverless.rollouts.weave_export import log_trajectory

            WEAVE_GUARD.run(
                log_trajectory, self.trajectory, client=self.weave, exception=self.exception
            )

    def __enter__(self) -> Rollout:
        self._token = _current.set(self)
        for fn in _ON_OPEN:  # RECORDING_GUARD.run inlined: every rollout passes here
            try:
                fn()
            except Exception as exc:
                RECORDING_GUARD.failed(exc)
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        _current.reset(self._token)
        self.finish(exc)

    def _leave(self) -> None:
        _current.reset(self._token)

    async def __aenter__(self) -> Rollout:
        return self.__enter__()

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        self._leave()
        await self.afinish(exc)

    def abandon(self) -> None:
        """Close an entered rollout without finishing it: nothing is stored or exported (a run
        interrupted from outside, to be sampled again, rather than one that failed)."""
        self._leave()


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"a reward must be a number, not {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"a reward must be a finite number, not {value!r}")
    return number


_warned_no_turns = False


def _warn_no_turns(rollout_id: str) -> None:
    """Once a process: a rollout finished with nothing the model said, so nothing to train."""
    global _warned_no_turns
    if not _warned_no_turns:
        _warned_no_turns = True
        log.warning(
            "rollout %s finished with no model turn recorded; it will not train (groups() leaves "
            "such rollouts out). %s. Said once a process.",
            rollout_id,
            NO_TURNS,
        )


class rollout:
    """Open a rollout: a context manager (sync or async) or a decorator.

    As a decorator each call is one rollout; a function that takes a ``rollout`` argument
    receives the Rollout (to set its reward), and the trajectory goes to the store.
    ``weave=True`` (after ``weave.init``) or a WeaveClient also exports it as a Weave trace.
    """

    def __init__(
        self,
        group: str | None = None,
        metadata: dict[str, Any] | None = None,
        store: RolloutStore | None = None,
        weave: Any = None,
    ) -> None:
        self._args = (group, dict(metadata or {}), store, weave)
        self._active: Rollout | None = None

    def _new(self) -> Rollout:
        group, metadata, store, weave = self._args
        return Rollout(group=group, metadata=dict(metadata), store=store, weave=weave)

    def __enter__(self) -> Rollout:
        group, metadata, store, weave = self._args  # _new() inlined: every rollout passes here
        run = self._active = Rollout(group=group, metadata=dict(metadata), store=store, weave=weave)
        return run.__enter__()

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        assert self._active is not None
        self._active.__exit__(kind, exc, tb)

    async def __aenter__(self) -> Rollout:
        self._active = self._new()
        return await self._active.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        assert self._active is not None
        await self._active.__aexit__(*exc)

    def __call__(self, fn: Callable) -> Callable:
        """Decorate a (sync or async) function: each call is one rollout."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with self._new() as run:
                    return await _call_with(run, fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._new() as run:
                if "rollout" in inspect.signature(fn).parameters:
                    kwargs["rollout"] = run
                return fn(*args, **kwargs)

        return wrapper


async def _call_with(run: Rollout, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    if "rollout" in inspect.signature(fn).parameters:
        kwargs["rollout"] = run
    return await fn(*args, **kwargs)
