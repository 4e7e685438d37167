"""Trace hooks must never break the agent they observe: their errors are logged once, counted."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from wandb_serverless.rollouts.weave_export import WeaveNotReady

log = logging.getLogger(__name__)


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
            self.failed(exc)
            return None

    def failed(self, exc: Exception) -> None:
        """Count (and the first time, log) an error caught outside ``run``."""
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
                log.error(
                    "%s failed; the agent is unaffected (errors are counted)",
                    self.name,
                    exc_info=exc,
                )


#: Guards ``record_call``: the model layer (``wandb_serverless.calls``) recording our adapters'
#: calls, with no trace hook involved.
RECORDING_GUARD = HookGuard("recording a chat call")
#: Guards the export of finished rollouts to Weave (a Weave outage never fails a rollout).
WEAVE_GUARD = HookGuard("Weave export", expected=(ImportError, WeaveNotReady))
