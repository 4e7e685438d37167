"""Record LlamaIndex runs (FunctionAgent, ReActAgent, query engines) as trajectories.

``RolloutEventHandler.install()`` adds it to LlamaIndex's root dispatcher. Inside
``with rollout(...)`` every chat call lands in that rollout; otherwise calls are grouped by the
``rollout_id`` tag (``with instrument_tags({"rollout_id": ...})``) or the workflow run id, and
``handler.finish()`` closes those rollouts.
"""

from __future__ import annotations

import json
from typing import Any

from llama_index.core.base.llms.types import ChatResponse
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMChatStartEvent
from llama_index.llms.wandb.utils import to_openai_message, to_openai_messages
from pydantic import PrivateAttr

from wandb_serverless.rollouts.hooks import KEEP_FINISHED, HookRecorder
from wandb_serverless.rollouts.recorder import Rollout, current_rollout, make_choice
from wandb_serverless.rollouts.store import RolloutStore
from wandb_serverless.trajectory import Trajectory

GROUP_TAGS = ("rollout_id", "llamaindex.run_id")
#: The events LlamaIndex workflows emit when a run ends (``workflows`` package): its output, or
#: the run's span dropped by an error.
RUN_ENDED = frozenset({"workflow.output", "SpanDropEvent"})


def choice_from_response(response: ChatResponse) -> Any:
    """The model's turn: a Choice with exact tokens when the LLM returned logprobs."""
    body = {k: v for k, v in to_openai_message(response.message).items() if k != "role"}
    calls = body.get("tool_calls")
    extra = response.additional_kwargs or {}
    logprobs = None
    if response.logprobs:
        logprobs = {
            "content": [
                {
                    "token": alts[0].token,
                    "logprob": alts[0].logprob,
                    "bytes": alts[0].bytes,
                    "top_logprobs": [
                        {"token": a.token, "logprob": a.logprob, "bytes": a.bytes} for a in alts[1:]
                    ],
                }
                for alts in response.logprobs
                if alts
            ]
        }
    finish = extra.get("finish_reason") or ("tool_calls" if calls else "stop")
    return make_choice(
        body,
        finish_reason=finish,
        logprobs=logprobs,
        token_ids=extra.get("token_ids"),
        prompt_token_ids=extra.get("prompt_token_ids"),
    )


class RolloutEventHandler(BaseEventHandler):
    """Captures LLM chat calls from LlamaIndex's instrumentation into rollouts.

    ``store``: where finished rollouts go (all of them); ``keep``: how many of the latest the
    handler also keeps in memory, for ``handler.trajectories``.
    """

    _hook: HookRecorder = PrivateAttr()

    def __init__(
        self, store: RolloutStore | None = None, *, keep: int = KEEP_FINISHED, **data: Any
    ) -> None:
        super().__init__(**data)
        self._hook = HookRecorder("RolloutEventHandler", store, keep=keep)

    @property
    def trajectories(self) -> list[Trajectory]:
        """The last ``keep`` rollouts this handler finished (the store has every one)."""
        return self._hook.trajectories

    @classmethod
    def class_name(cls) -> str:
        return "RolloutEventHandler"

    @property
    def errors(self) -> int:
        return self._hook.guard.errors

    def install(self) -> RolloutEventHandler:
        """Add this handler to LlamaIndex's root dispatcher (once)."""
        dispatcher = get_dispatcher()
        if self not in dispatcher.event_handlers:
            dispatcher.add_event_handler(self)
        return self

    def uninstall(self) -> None:
        dispatcher = get_dispatcher()
        dispatcher.event_handlers = [h for h in dispatcher.event_handlers if h is not self]

    def finish(self) -> list[Trajectory]:
        """Close the rollouts grouped by tag (explicit ``rollout()`` blocks close themselves;
        a workflow run's own rollout closes when the run ends)."""
        return [r.trajectory for r in self._hook.finish() if r.trajectory is not None]

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self._hook.guard.run(self._handle, event)

    def _rollout(self, event: BaseEvent) -> Rollout | None:
        tags = event.tags or {}
        key = next((str(tags[t]) for t in GROUP_TAGS if tags.get(t)), None)
        if key is None:
            return current_rollout()
        # a workflow run's rollout is its own (closed when the run ends); a rollout_id tag's
        # stays open across runs until finish()
        owner = None if tags.get("rollout_id") else key
        return self._hook.rollout(key, group=tags.get("rollout_group"), owner=owner)

    def _handle(self, event: BaseEvent) -> None:
        if event.class_name() in RUN_ENDED:
            run_id = (event.tags or {}).get("llamaindex.run_id")
            if run_id:  # the workflow run is over: so is the rollout it opened, if any
                error = getattr(event, "err_str", None)
                self._hook.finish(str(run_id), RuntimeError(error) if error else None)
            return
        if isinstance(event, LLMChatStartEvent):
            run = self._rollout(event)
            if run is None:
                return
            messages = to_openai_messages(list(event.messages))
            tools = [
                t for t in (event.additional_kwargs or {}).get("tools") or [] if isinstance(t, dict)
            ] or None
            self._hook.start_call(_key(event, messages), run, messages, tools)
        elif isinstance(event, LLMChatEndEvent) and event.response and self._hook.waiting:
            key = _key(event, to_openai_messages(list(event.messages)))
            response = event.response
            self._hook.end_call(key, lambda: choice_from_response(response))


def _key(event: BaseEvent, messages: list[dict[str, Any]]) -> tuple[str | None, str]:
    """Start and end events pair by span and messages: concurrent runs often send the same
    messages (a group's rollouts), but each from its own span."""
    return event.span_id, json.dumps(messages, sort_keys=True, default=str)
