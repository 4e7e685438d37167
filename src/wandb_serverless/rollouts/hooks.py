"""What every framework trace hook shares: the rollouts it opens itself, the calls between their
start and end callbacks, and finishing. LangChain's ``RolloutCallbackHandler`` and LlamaIndex's
``RolloutEventHandler`` only turn their framework's events into these calls.

Inside ``with rollout(...)`` every call lands in that rollout. Otherwise a hook groups calls by a
key of its framework's (a root run, a tag) into a rollout it opens, and finishes it when the
framework says the run is over. A call the model layer already recorded into the open rollout
(our adapters, with exact tokens) is not recorded again: the recorder marks it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from wandb_serverless.rollouts.recorder import (
    HookGuard,
    LLMCall,
    ObservedCall,
    Rollout,
    current_rollout,
    end_observation,
    observe_call,
    turn_labels,
)
from wandb_serverless.rollouts.store import RolloutStore
from wandb_serverless.trajectory import Trajectory

EVERY = object()  # finish(): every rollout the hook opened
#: Finished rollouts a hook keeps in memory for ``handler.trajectories`` (the store keeps all):
#: a hook in a service that runs for weeks must not grow with every run.
KEEP_FINISHED = 100


@dataclass
class _Pending:
    rollout: Rollout
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    observed: ObservedCall
    labels: dict[str, Any]


class HookRecorder:
    """The recording state of one trace hook (thread-safe; its errors are counted on ``guard``)."""

    def __init__(
        self, name: str, store: RolloutStore | None = None, *, keep: int = KEEP_FINISHED
    ) -> None:
        if not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep must be a whole number >= 0, not {keep!r}")
        self.guard = HookGuard(name)
        self.store = store
        self.finished: deque[Rollout] = deque(maxlen=keep)  # the latest ``keep``
        self._open: dict[Hashable, tuple[Rollout, Hashable]] = {}  # key -> (rollout, owner)
        self._pending: dict[Hashable, list[_Pending]] = {}
        self._lock = threading.RLock()

    @property
    def trajectories(self) -> list[Trajectory]:
        """The last ``keep`` rollouts this hook finished, in order (each built on first use;
        every one is in the store, when the hook has one)."""
        return [run.trajectory for run in self.finished if run.trajectory is not None]

    @property
    def waiting(self) -> bool:
        """Whether any call is between its start and end."""
        return bool(self._pending)

    def rollout(self, key: Hashable, *, group: str | None, owner: Hashable = None) -> Rollout:
        """The rollout open in this context, else the one this hook keeps for ``key`` (opened
        now if new; ``owner`` is what ``finish`` closes it by)."""
        explicit = current_rollout()
        if explicit is not None:
            return explicit
        with self._lock:
            if key not in self._open:
                self._open[key] = (Rollout(group=group, store=self.store), owner)
            return self._open[key][0]

    def start_call(
        self,
        call: Hashable,
        rollout: Rollout,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        *,
        model: str | None = None,
        role: str | None = None,
        step: str | None = None,
    ) -> None:
        """A model call began: watched from here (the model layer asks for exact tokens).
        ``model``, ``role`` and ``step`` are what the framework says of the call."""
        observed = observe_call(role=role, step=step)
        pending = _Pending(rollout, messages, tools, observed, turn_labels(model))
        with self._lock:
            self._pending.setdefault(call, []).append(pending)

    def end_call(self, call: Hashable, turn: Callable[[], Any]) -> None:
        """The call ended: ``turn()`` (the model's turn as ``make_choice`` data, or None if
        there is none) is recorded, unless the model layer recorded this call already."""
        pending = self._pop(call)
        if pending is None or pending.observed.recorded:
            return
        choice = turn()
        if choice is not None:
            pending.rollout.add_call(
                LLMCall(pending.messages, pending.tools, choice, pending.labels)
            )

    def fail_call(self, call: Hashable, error: BaseException) -> None:
        pending = self._pop(call)
        if pending is not None:
            pending.rollout.log(f"LLM call failed: {type(error).__name__}: {error}")

    def _pop(self, call: Hashable) -> _Pending | None:
        with self._lock:
            waiting = self._pending.get(call)
            if not waiting:
                return None
            pending = waiting.pop(0)
            if not waiting:
                del self._pending[call]
        end_observation(pending.observed)
        return pending

    def finish(self, owner: Any = EVERY, error: BaseException | None = None) -> list[Rollout]:
        """Finish the rollouts this hook opened for ``owner`` (all of them by default)."""
        with self._lock:
            keys = [k for k, (_, o) in self._open.items() if owner is EVERY or o == owner]
            done = [self._open.pop(k)[0] for k in keys]
        for run in done:
            run.finish(error)
        self.finished.extend(done)
        return done
