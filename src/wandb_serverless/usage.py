"""What model calls cost, counted where every call passes (``wandb_serverless.calls``): a
``Meter`` opened with ``metered()`` counts the calls and tokens of every chat call made in its
context (tasks and threads started from it included), by model, with judge calls (``judging()``,
used by the reward helpers' LLM judge) apart from the agent's own.

Only calls through ``ChatWandb`` / ``WandbLLM`` (and anything else built on ``calls``) are
counted: the usage the server reports, which is what is billed.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from wandb_serverless.models import SCHEME, CheckpointRef

__all__ = ["Meter", "TokenCount", "judging", "metered", "metering", "record_usage"]


@dataclass
class TokenCount:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: TokenCount) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


@dataclass
class Meter:
    """Calls and tokens by (kind, model): kind is ``"model"`` or ``"judge"``; a checkpoint's
    model is its ``entity/project/name`` (every step of it bills alike: at its base's rates)."""

    counts: dict[tuple[str, str], TokenCount] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            count = self.counts.setdefault((kind, model_key(model)), TokenCount())
            count.calls += 1
            count.prompt_tokens += prompt_tokens
            count.completion_tokens += completion_tokens

    def total(self, kind: str) -> TokenCount:
        out = TokenCount()
        with self._lock:
            for (counted, _), count in self.counts.items():
                if counted == kind:
                    out.add(count)
        return out


_meter: contextvars.ContextVar[Meter | None] = contextvars.ContextVar(
    "wandb_usage_meter", default=None
)
_judging: contextvars.ContextVar[bool] = contextvars.ContextVar("wandb_judging", default=False)


def model_key(model: str) -> str:
    if isinstance(model, str) and model.startswith(SCHEME):
        try:
            return CheckpointRef.parse(model).path
        except ValueError:
            return model
    return str(model)


@contextlib.contextmanager
def metered(meter: Meter | None = None) -> Iterator[Meter]:
    """Count the calls made in this block (and in what it starts) on ``meter`` (a new one)."""
    meter = meter if meter is not None else Meter()
    token = _meter.set(meter)
    try:
        yield meter
    finally:
        _meter.reset(token)


@contextlib.contextmanager
def judging() -> Iterator[None]:
    """Calls in this block are an LLM judge's (counted apart from the agent's)."""
    token = _judging.set(True)
    try:
        yield
    finally:
        _judging.reset(token)


def metering() -> bool:
    """Whether a ``metered()`` block is open in this context (its usage is wanted)."""
    return _meter.get() is not None


def record_usage(model: str | None, prompt_tokens: int, completion_tokens: int) -> None:
    """Count one call on the meter open in this context (a no-op without one)."""
    meter = _meter.get()
    if meter is not None:
        kind = "judge" if _judging.get() else "model"
        meter.add(kind, model or "", prompt_tokens, completion_tokens)
