"""Record LangChain / LangGraph runs as trainable trajectories, with no change to the agent.

Pass ``RolloutCallbackHandler()`` in ``config={"callbacks": [...]}`` or install it once with
``RolloutCallbackHandler.install()``. Inside ``with rollout(...)`` every LLM call lands in that
rollout; otherwise each root run (or each ``metadata={"rollout_id": ...}``) is one rollout,
finished when its root run ends and kept in ``handler.trajectories`` (and the store).

Each turn is labelled with the LangGraph node it ran in (its step, what
``Rollout.reward_step`` rewards) and with ``metadata={"wandb_role": ...}`` of the model or run,
if set (its role; ``ChatWandb(role=...)`` does the same).
"""

from __future__ import annotations

import contextvars
import json
import threading
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import LLMResult
from langchain_core.tracers.context import register_configure_hook

from langchain_wandb.messages import convert_messages_to_dicts
from wandb_serverless.rollouts.hooks import KEEP_FINISHED, HookRecorder
from wandb_serverless.rollouts.recorder import Rollout, make_choice
from wandb_serverless.rollouts.store import RolloutStore
from wandb_serverless.trajectory import Trajectory

_installed: contextvars.ContextVar[RolloutCallbackHandler | None] = contextvars.ContextVar(
    "wandb_rollout_handler", default=None
)
register_configure_hook(_installed, inheritable=True)


def _openai_tool_calls(message: AIMessage) -> list[dict[str, Any]]:
    calls = [
        {
            "id": c.get("id"),
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)},
        }
        for c in message.tool_calls
    ]
    calls += [
        {
            "id": c.get("id"),
            "type": "function",
            "function": {"name": c.get("name") or "", "arguments": c.get("args") or ""},
        }
        for c in message.invalid_tool_calls
    ]
    return calls


def choice_from_message(message: BaseMessage, generation_info: dict[str, Any] | None = None) -> Any:
    """The model's turn from an AIMessage: a Choice with exact tokens when the model returned
    logprobs (ChatWandb also returns token ids), a plain assistant dict otherwise."""
    metadata = {**(generation_info or {}), **getattr(message, "response_metadata", {})}
    content = message.content if isinstance(message.content, str) else message.text
    body: dict[str, Any] = {"content": content or None}
    if isinstance(message, AIMessage) and (message.tool_calls or message.invalid_tool_calls):
        body["tool_calls"] = _openai_tool_calls(message)
    return make_choice(
        body,
        finish_reason=metadata.get("finish_reason"),
        logprobs=metadata.get("logprobs"),
        token_ids=metadata.get("token_ids"),
        prompt_token_ids=metadata.get("prompt_token_ids"),
    )


class RolloutCallbackHandler(BaseCallbackHandler):
    """Captures every chat-model call, tool result and error into rollouts."""

    run_inline = True  # in order, in the caller's context (where the rollout contextvar lives)
    raise_error = False

    def __init__(
        self,
        store: RolloutStore | None = None,
        *,
        group: str | None = None,
        keep: int = KEEP_FINISHED,
    ) -> None:
        """``store``: where finished rollouts go (all of them); ``keep``: how many of the
        latest the handler also keeps in memory, for ``handler.trajectories``."""
        self.group = group
        self.hook = HookRecorder("RolloutCallbackHandler", store, keep=keep)
        self.guard = self.hook.guard
        self._parents: dict[UUID, UUID | None] = {}
        self._runs: dict[UUID, Rollout] = {}  # run id -> its rollout
        self._members: dict[UUID, list[UUID]] = {}  # root run -> the runs under it
        self._lock = threading.RLock()

    @property
    def store(self) -> RolloutStore | None:
        return self.hook.store

    @property
    def errors(self) -> int:
        return self.guard.errors

    @property
    def trajectories(self) -> list[Trajectory]:
        """The last ``keep`` rollouts this handler finished, in the order their root runs
        ended (each built on first use, off the agent's path; the store has every one)."""
        return self.hook.trajectories

    # -- installation ------------------------------------------------------------------------

    def install(self) -> RolloutCallbackHandler:
        """Add this handler to every LangChain run started from this context on."""
        _installed.set(self)
        return self

    @staticmethod
    def uninstall() -> None:
        _installed.set(None)

    # -- grouping: each root run (or metadata rollout_id) is one rollout -----------------------

    def _root(self, run_id: UUID) -> UUID:
        while self._parents.get(run_id) is not None:
            run_id = self._parents[run_id]  # type: ignore[assignment]
        return run_id

    def _rollout(self, run_id: UUID, parent_run_id: UUID | None, metadata: dict | None) -> Rollout:
        with self._lock:
            self._parents.setdefault(run_id, parent_run_id)
            if run_id in self._runs:
                return self._runs[run_id]
            root = self._root(run_id)
            metadata = metadata or {}
            rollout = self.hook.rollout(
                metadata.get("rollout_id") or root,
                group=metadata.get("rollout_group", self.group),
                owner=root,
            )
            self._runs[run_id] = rollout
            self._members.setdefault(root, []).append(run_id)
            return rollout

    def _finish_root(self, run_id: UUID, error: BaseException | None = None) -> None:
        with self._lock:
            for member in self._members.pop(run_id, []):  # the run tree is done: forget it
                self._parents.pop(member, None)
                self._runs.pop(member, None)
        self.hook.finish(run_id, error)

    # -- callbacks ---------------------------------------------------------------------------

    def on_chain_start(
        self,
        serialized: Any,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict | None = None,
        **kwargs: Any,
    ) -> None:
        self.guard.run(self._rollout, run_id, parent_run_id, metadata)

    def on_chat_model_start(
        self,
        serialized: Any,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict | None = None,
        **kwargs: Any,
    ) -> None:
        def start() -> None:
            rollout = self._rollout(run_id, parent_run_id, metadata)
            params = kwargs.get("invocation_params") or {}
            meta = metadata or {}
            self.hook.start_call(
                run_id,
                rollout,
                convert_messages_to_dicts(messages[0]),
                params.get("tools") or None,
                model=params.get("model") or params.get("model_name") or meta.get("ls_model_name"),
                role=meta.get("wandb_role"),
                step=meta.get("wandb_step") or meta.get("langgraph_node"),
            )

        self.guard.run(start)

    def on_llm_end(
        self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        def end() -> None:
            generation = response.generations[0][0]
            message = getattr(generation, "message", None)
            info = generation.generation_info
            self.hook.end_call(
                run_id, lambda: None if message is None else choice_from_message(message, info)
            )
            if parent_run_id is None:
                self._finish_root(run_id)

        self.guard.run(end)

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        def failed() -> None:
            self.hook.fail_call(run_id, error)
            if parent_run_id is None:
                self._finish_root(run_id, error)

        self.guard.run(failed)

    def on_tool_start(
        self,
        serialized: Any,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict | None = None,
        **kwargs: Any,
    ) -> None:
        self.guard.run(self._rollout, run_id, parent_run_id, metadata)

    def on_tool_end(
        self, output: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        def end() -> None:
            rollout = self._runs.get(run_id)
            if rollout is not None and isinstance(output, ToolMessage) and output.tool_call_id:
                content = (
                    output.content
                    if isinstance(output.content, str)
                    else json.dumps(output.content)
                )
                rollout.add_tool_result(output.tool_call_id, content)
            if parent_run_id is None:  # a tool called on its own is a run of its own
                self._finish_root(run_id)

        self.guard.run(end)

    def on_chain_end(
        self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        if parent_run_id is None:
            self.guard.run(self._finish_root, run_id)

    def on_chain_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        if parent_run_id is None:
            self.guard.run(self._finish_root, run_id, error)

    on_tool_error = on_chain_error  # a tool called on its own is a run of its own
