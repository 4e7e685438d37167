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
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wandb_serverless.rollouts.weave_export import WeaveNotReady
from wandb_serverless.trajectory import (
    NO_TURNS,
    Choice,
    History,
    Trajectory,
    choice_to_message,
    message_or_choice,
)

if TYPE_CHECKING:
    from wandb_serverless.rollouts.store import RolloutStore

log = logging.getLogger(__name__)
_current: contextvars.ContextVar[Rollout | None] = contextvars.ContextVar(
    "wandb_rollout", default=None
)


def current_rollout() -> Rollout | None:
    """The rollout open in this context, if any."""
    return _current.get()


@dataclass
class ObservedCall:
    """A model call a trace hook is watching, between its start and end callbacks.

    While one is open in a context the model layer asks for exact tokens (the hook will record
    them), and if the call lands in an open rollout through ``record_call`` it is marked
    ``recorded``, so the hook does not record it a second time.
    """

    recorded: bool = False


_observed: contextvars.ContextVar[ObservedCall | None] = contextvars.ContextVar(
    "wandb_observed_call", default=None
)


def observe_call() -> ObservedCall:
    """Open a watched call in this context (a hook's start callback)."""
    call = ObservedCall()
    _observed.set(call)
    return call


def end_observation(call: ObservedCall) -> None:
    """Close a watched call (its end or error callback)."""
    if _observed.get() is call:
        _observed.set(None)


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
) -> bool:
    """Add a model turn (the request's messages and tools, the assistant ``message`` and its
    exact tokens) to the rollout open in this context, and mark the watched call recorded.
    True if a rollout was open. Never raises: failures are counted on ``RECORDING_GUARD``."""
    if _current.get() is None:
        return False
    turn = (message, finish_reason, logprobs, token_ids, prompt_token_ids)
    return bool(RECORDING_GUARD.run(_record, messages, tools, *turn))


def _record(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    message: dict[str, Any],
    finish_reason: str | None,
    logprobs: dict[str, Any] | None,
    token_ids: list[int] | None,
    prompt_token_ids: list[int] | None,
) -> bool:
    run = _current.get()
    if run is None:
        return False
    body = {k: v for k, v in message.items() if k != "role" and v is not None}
    body.setdefault("content", None)
    choice = make_choice(
        body,
        finish_reason=finish_reason,
        logprobs=logprobs,
        token_ids=token_ids,
        prompt_token_ids=prompt_token_ids,
    )
    run.add_call(LLMCall(messages, tools, choice))
    observed = _observed.get()
    if observed is not None:
        observed.recorded = True
    return True


@dataclass
class LLMCall:
    """One model call: what was sent, the tools offered, and the model's turn.

    ``choice`` is JSON data (what ``make_choice`` returns) or a ``Choice``: recording keeps the
    server's data as it came, and it is validated once, when the trajectory is built.
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    choice: dict[str, Any] | Choice


def make_choice(
    message: dict[str, Any],
    *,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    token_ids: list[int] | None = None,
    prompt_token_ids: list[int] | None = None,
) -> dict[str, Any]:
    """The model's turn as JSON data: a ``Choice`` (trainable) when logprobs came back, else a
    plain assistant message. ``History`` validates either when the trajectory is built."""
    if logprobs is None:
        return {k: v for k, v in message.items() if v is not None} | {"role": "assistant"}
    data: dict[str, Any] = {
        "index": 0,
        "finish_reason": finish_reason if finish_reason in _FINISH else "stop",
        "message": {"role": "assistant", **{k: v for k, v in message.items() if k != "role"}},
        "logprobs": logprobs,
    }
    if token_ids is not None:
        data["token_ids"] = token_ids
    if prompt_token_ids is not None:
        data["prompt_token_ids"] = prompt_token_ids
    return data


_FINISH = {"stop", "length", "tool_calls", "content_filter", "function_call"}


def _as_message(item: dict[str, Any] | Choice) -> dict[str, Any]:
    """The message a recorded item stands for (a model turn's message, else the item)."""
    if isinstance(item, Choice):
        return choice_to_message(item)
    return item["message"] if "role" not in item and "message" in item else item


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Messages match on role, content and tool-call identity (not on formatting)."""
    if a.get("role") != b.get("role") or (a.get("content") or "") != (b.get("content") or ""):
        return False
    names_a = [(c.get("id"), c["function"]["name"]) for c in a.get("tool_calls") or []]
    names_b = [(c.get("id"), c["function"]["name"]) for c in b.get("tool_calls") or []]
    return names_a == names_b and a.get("tool_call_id") == b.get("tool_call_id")


def merge_calls(calls: list[LLMCall]) -> tuple[History | None, list[History]]:
    """Prefix-merge calls into histories: the first is the main one, the rest side ones."""
    merged: list[tuple[list[Any], list[dict[str, Any]], list[dict[str, Any]] | None]] = []
    for call in calls:
        turn = _as_message(call.choice)
        for items, known, tools in merged:
            if (
                len(known) <= len(call.messages)
                and (tools or None) == (call.tools or None)
                and all(_same(k, m) for k, m in zip(known, call.messages, strict=False))
            ):
                new = call.messages[len(known) :]
                items += [*new, call.choice]
                known += [*new, turn]
                break
        else:
            merged.append(([*call.messages, call.choice], [*call.messages, turn], call.tools))
    histories = [History(messages_and_choices=items, tools=tools) for items, _, tools in merged]
    if not histories:
        return None, []
    return histories[0], histories[1:]


def _build(
    calls: list[LLMCall], tool_results: dict[str, dict[str, Any]], fields: dict[str, Any]
) -> Trajectory:
    """A Trajectory from recorded calls; tool results no call's messages carried go last.

    A call whose model turn does not validate (a server's malformed logprobs, say) is dropped,
    logged once and counted, as any recording failure: the rest of the trajectory is kept.
    """
    main, others = merge_calls([checked for call in calls if (checked := _validated(call))])
    if main is None:  # no model turn was recorded
        return Trajectory(**fields)
    seen = {m.get("tool_call_id") for m in main.messages()}
    items = [*main.messages_and_choices, *(r for k, r in tool_results.items() if k not in seen)]
    return Trajectory(
        messages_and_choices=items, tools=main.tools, additional_histories=others, **fields
    )


def _validated(call: LLMCall) -> LLMCall | None:
    choice = RECORDING_GUARD.run(message_or_choice, call.choice)
    return None if choice is None else LLMCall(call.messages, call.tools, choice)


@dataclass
class Rollout:
    """One agent run being recorded. Set ``reward``, add ``metrics``, call ``log(...)``."""

    group: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    store: RolloutStore | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    reward: float = 0.0
    metrics: dict[str, float | int | bool] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    calls: list[LLMCall] = field(default_factory=list)
    tool_results: dict[str, dict[str, Any]] = field(default_factory=dict)
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

    # -- finishing ---------------------------------------------------------------------------

    @property
    def trajectory(self) -> Trajectory | None:
        """The finished Trajectory: None while the rollout is open, then what it held when it
        exited (built on first use: recording itself never waits on validation)."""
        if self._trajectory is None and self._final is not None:
            self._trajectory = _build(*self._final)
        return self._trajectory

    def _built(self) -> Trajectory:
        trajectory = self.trajectory
        assert trajectory is not None, "called after _complete"
        return trajectory

    def build(self) -> Trajectory:
        """The Trajectory so far."""
        return _build(*self._snapshot())

    def _snapshot(self) -> tuple[list[LLMCall], dict[str, dict[str, Any]], dict[str, Any]]:
        """What the trajectory is built from: the calls, tool results and the other fields."""
        with self._lock:
            calls, results = list(self.calls), dict(self.tool_results)
        metadata = {**self.metadata, "rollout_id": self.id}
        if self.group is not None:
            metadata["group"] = self.group
        logs = list(self.logs)
        if self.exception:
            metadata["exception_type"] = self.exception["type"]
            logs.append(f"{self.exception['type']}: {self.exception['message']}")
        fields = {
            "reward": float(self.reward),
            "metrics": dict(self.metrics),
            "metadata": {
                k: v
                for k, v in metadata.items()
                if isinstance(v, str | int | float | bool) or v is None
            },
            "logs": logs,
        }
        if self.policy_step is not None:
            fields["initial_policy_version"] = fields["final_policy_version"] = self.policy_step
        return calls, results, fields

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
        self._export()

    async def afinish(self, exc: BaseException | None = None) -> None:
        """``finish`` with the store's async save."""
        self._complete(exc)
        if self.store is not None:
            await self.store.asave(self._built(), group=self.group, exception=self.exception)
        self._export()

    def _export(self) -> None:
        if self.weave is not None and self.weave is not False:
            from wandb_serverless.rollouts.weave_export import log_trajectory

            WEAVE_GUARD.run(
                log_trajectory, self.trajectory, client=self.weave, exception=self.exception
            )

    def __enter__(self) -> Rollout:
        self._token = _current.set(self)
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        _current.reset(self._token)
        self.finish(exc)

    async def __aenter__(self) -> Rollout:
        return self.__enter__()

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        _current.reset(self._token)
        await self.afinish(exc)

    def abandon(self) -> None:
        """Close an entered rollout without finishing it: nothing is stored or exported (a run
        interrupted from outside, to be sampled again, rather than one that failed)."""
        _current.reset(self._token)


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
        self._active = self._new()
        return self._active.__enter__()

    def __exit__(self, *exc: Any) -> None:
        assert self._active is not None
        self._active.__exit__(*exc)

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


class HookGuard:
    """Trace hooks must never break the agent they observe: errors are logged once, counted."""

    def __init__(self, name: str, expected: tuple[type[Exception], ...] = ()) -> None:
        self.name = name
        self.errors = 0
        self._logged = False
        self.expected = expected  # a set-up error the user can fix: one line, no traceback

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.errors += 1
            if not self._logged:
                self._logged = True
                if isinstance(exc, self.expected):
                    log.warning(
                        "%s failed: %s (the agent is unaffected; said once, errors are counted)",
                        self.name,
                        exc,
                    )
                else:
                    log.exception(
                        "%s failed; the agent is unaffected (errors are counted)", self.name
                    )
            return None


#: Guards ``record_call``: the model layer (``wandb_serverless.calls``) recording our adapters'
#: calls, with no trace hook involved.
RECORDING_GUARD = HookGuard("recording a chat call")
#: Guards the export of finished rollouts to Weave (a Weave outage never fails a rollout).
WEAVE_GUARD = HookGuard("Weave export", expected=(ImportError, WeaveNotReady))
