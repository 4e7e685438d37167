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

from wandb_serverless.rollouts.trajectory import Choice, History, Trajectory

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
class LLMCall:
    """One model call: what was sent, the tools offered, and the model's turn."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    choice: Choice | dict[str, Any]

    @property
    def trainable(self) -> bool:
        return isinstance(self.choice, Choice) and self.choice.logprobs is not None


def make_choice(
    message: dict[str, Any],
    *,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    token_ids: list[int] | None = None,
    prompt_token_ids: list[int] | None = None,
) -> Choice | dict[str, Any]:
    """The model's turn: a trainable ``Choice`` when logprobs came back, else a plain dict."""
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
    return Choice.model_validate(data)


_FINISH = {"stop", "length", "tool_calls", "content_filter", "function_call"}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Messages match on role, content and tool-call identity (not on formatting)."""
    if a.get("role") != b.get("role") or (a.get("content") or "") != (b.get("content") or ""):
        return False
    names_a = [(c.get("id"), c["function"]["name"]) for c in a.get("tool_calls") or []]
    names_b = [(c.get("id"), c["function"]["name"]) for c in b.get("tool_calls") or []]
    return names_a == names_b and a.get("tool_call_id") == b.get("tool_call_id")


def merge_calls(calls: list[LLMCall]) -> tuple[History | None, list[History]]:
    """Prefix-merge calls into histories: the first is the main one, the rest side ones."""
    histories: list[History] = []
    for call in calls:
        for history in histories:
            known = history.messages()
            if (
                len(known) <= len(call.messages)
                and (history.tools or None) == (call.tools or None)
                and all(_same(k, m) for k, m in zip(known, call.messages, strict=False))
            ):
                history.messages_and_choices += [*call.messages[len(known) :], call.choice]
                break
        else:
            histories.append(
                History(messages_and_choices=[*call.messages, call.choice], tools=call.tools)
            )
    if not histories:
        return None, []
    return histories[0], histories[1:]


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
    trajectory: Trajectory | None = None
    weave: Any = None  # True (the client weave.init made) or a WeaveClient: export on exit
    _token: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- what hooks call ---------------------------------------------------------------------

    def add_call(self, call: LLMCall) -> None:
        with self._lock:
            self.calls.append(call)

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

    def build(self) -> Trajectory:
        """The Trajectory so far (also used on exit)."""
        with self._lock:
            main, others = merge_calls(list(self.calls))
            tools = main.tools if main else None
            items = list(main.messages_and_choices) if main else []
            seen = {m.get("tool_call_id") for m in (main.messages() if main else [])}
            items += [r for k, r in self.tool_results.items() if k not in seen and main is not None]
        metadata = {**self.metadata, "rollout_id": self.id}
        if self.group is not None:
            metadata["group"] = self.group
        logs = list(self.logs)
        if self.exception:
            metadata["exception_type"] = self.exception["type"]
            logs.append(f"{self.exception['type']}: {self.exception['message']}")
        return Trajectory(
            messages_and_choices=items,
            tools=tools,
            additional_histories=others,
            reward=float(self.reward),
            metrics=dict(self.metrics),
            metadata={
                k: v
                for k, v in metadata.items()
                if isinstance(v, str | int | float | bool) or v is None
            },
            logs=logs,
        )

    def _complete(self, exc: BaseException | None) -> Trajectory:
        if exc is not None and not isinstance(exc, GeneratorExit):
            self.exception = {
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(exc))[-4000:],
            }
        self.trajectory = self.build()
        return self.trajectory

    def _finish(self, exc: BaseException | None) -> None:
        trajectory = self._complete(exc)
        if self.store is not None:
            self.store.save(trajectory, group=self.group, exception=self.exception)
        self._export(trajectory)

    async def _afinish(self, exc: BaseException | None) -> None:
        trajectory = self._complete(exc)
        if self.store is not None:
            await self.store.asave(trajectory, group=self.group, exception=self.exception)
        self._export(trajectory)

    def _export(self, trajectory: Trajectory) -> None:
        if self.weave is not None and self.weave is not False:
            from wandb_serverless.rollouts.weave_export import log_trajectory

            WEAVE_GUARD.run(log_trajectory, trajectory, client=self.weave)

    def __enter__(self) -> Rollout:
        self._token = _current.set(self)
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        _current.reset(self._token)
        self._finish(exc)

    async def __aenter__(self) -> Rollout:
        return self.__enter__()

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        _current.reset(self._token)
        await self._afinish(exc)


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

    def __init__(self, name: str) -> None:
        self.name = name
        self.errors = 0
        self._logged = False

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            self.errors += 1
            if not self._logged:
                self._logged = True
                log.exception("%s failed; the agent is unaffected (errors are counted)", self.name)
            return None


#: Guards the recording our adapters' calls do in ``chat.post`` (no trace hook involved).
RECORDING_GUARD = HookGuard("recording a chat call")
#: Guards the export of finished rollouts to Weave (a Weave outage never fails a rollout).
WEAVE_GUARD = HookGuard("Weave export")
