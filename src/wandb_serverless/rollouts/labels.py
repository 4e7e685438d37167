"""What a recorded model turn is labelled with: the trace hook watching the call (``ObservedCall``:
exact tokens wanted, recorded once), the role it plays and the step it was made in."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any


@dataclass
class ObservedCall:
    """A model call a trace hook is watching, between its start and end callbacks.

    While one is open in a context the model layer asks for exact tokens (the hook will record
    them), and if the call lands in an open rollout through ``record_call`` it is marked
    ``recorded``, so the hook does not record it a second time. ``role`` and ``step`` are what
    the hook knows of the call (a role named in the framework's metadata, a LangGraph node).
    """

    recorded: bool = False
    role: str | None = None
    step: str | None = None


_observed: contextvars.ContextVar[ObservedCall | None] = contextvars.ContextVar(
    "wandb_observed_call", default=None
)


def observe_call(*, role: str | None = None, step: str | None = None) -> ObservedCall:
    """Open a watched call in this context (a hook's start callback)."""
    call = ObservedCall(role=role, step=step)
    _observed.set(call)
    return call


def end_observation(call: ObservedCall) -> None:
    """Close a watched call (its end or error callback)."""
    if _observed.get() is call:
        _observed.set(None)


_role: contextvars.ContextVar[str | None] = contextvars.ContextVar("wandb_role", default=None)
_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("wandb_step", default=None)


def check_label(kind: str, name: Any) -> str:
    """A role's or step's name, or ValueError: a non-empty string."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a {kind} name must be a non-empty string, not {name!r}")
    return name


def check_role(name: Any) -> str | None:
    """An adapter's ``role=``: None (no role) or a role's name, as ``role()`` takes it."""
    return None if name is None else check_label("role", name)


class _Label:
    """``with role("planner"):`` / ``with step("search"):``: model turns recorded inside are
    labelled so (sync or async code; the innermost label wins)."""

    def __init__(self, var: contextvars.ContextVar[str | None], kind: str, name: str) -> None:
        self._var, self.name = var, check_label(kind, name)
        self._tokens: list[contextvars.Token[str | None]] = []

    def __enter__(self) -> str:
        self._tokens.append(self._var.set(self.name))
        return self.name

    def __exit__(self, *exc: Any) -> None:
        self._var.reset(self._tokens.pop())


def role(name: str) -> _Label:
    """Label the model turns recorded in this block as made by the role ``name`` (a planner,
    an executor: each role trains its own model, see ``RolloutStore.groups(role=...)``).
    Adapters take ``role=`` too; that wins."""
    return _Label(_role, "role", name)


def step(name: str) -> _Label:
    """Label the model turns recorded in this block as part of the step ``name`` (what
    ``Rollout.reward_step`` rewards; a LangGraph node is a step without this)."""
    return _Label(_step, "step", name)


def turn_labels(model: str | None, role: str | None = None) -> dict[str, Any]:
    """What a recorded turn says of itself: the model asked, its role and step (the adapter's
    or a hook's word, else the enclosing ``role()`` / ``step()`` block's)."""
    observed = _observed.get()
    labels: dict[str, Any] = {}
    if model:
        labels["model"] = model
    role = role or (observed.role if observed else None) or _role.get()
    if role:
        labels["role"] = role
    step = (observed.step if observed else None) or _step.get()
    if step:
        labels["step"] = step
    return labels
