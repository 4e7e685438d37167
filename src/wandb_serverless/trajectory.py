"""Trajectory data model, JSON-compatible with the W&B RL job schema and OpenPipe ART.

Model turns are OpenAI ``Choice`` objects (trainable when they carry logprobs and token ids);
everything else (system, user, tool, plain assistant dicts) is context.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from openai.types.chat.chat_completion import Choice
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema

__all__ = ["Choice", "History", "Trajectory", "TrajectoryGroup"]

NO_TURNS = (
    "what the model says is recorded from calls through ChatWandb, WandbLLM, any openai "
    "client's chat.completions inside rollout(), and LangChain / LlamaIndex models with the "
    "trace hooks installed; Responses API calls and raw HTTP requests are not"
)
MESSAGE_ROLES = frozenset({"developer", "system", "user", "assistant", "tool", "function"})


def message_or_choice(value: Any) -> dict[str, Any] | Choice:
    """One item of ``messages_and_choices``, validated: a message dict or a ``Choice``."""
    if isinstance(value, Choice):
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_none=True)
    if not isinstance(value, dict):
        raise ValueError(f"expected a message dict or a Choice, got {type(value).__name__}")
    if "role" not in value:
        if "message" in value:
            return Choice.model_validate(value)
        raise ValueError("message is missing 'role' (a Choice needs 'message' and 'finish_reason')")
    if not isinstance(value["role"], str) or value["role"] not in MESSAGE_ROLES:
        raise ValueError(f"unknown role {value['role']!r}; expected one of {sorted(MESSAGE_ROLES)}")
    if value["role"] == "tool" and not value.get("tool_call_id"):
        raise ValueError("a tool message needs 'tool_call_id'")
    return value


def _dump(value: dict[str, Any] | Choice) -> dict[str, Any]:
    return value.model_dump(mode="json") if isinstance(value, Choice) else value


MessageOrChoice = Annotated[
    Any,
    PlainValidator(message_or_choice),
    PlainSerializer(_dump),
    WithJsonSchema({"type": "object", "description": "an OpenAI message param or a Choice"}),
]
Tools = list[dict[str, Any]]


def choice_to_message(choice: Choice) -> dict[str, Any]:
    """The assistant message a Choice stands for (content never None, as ART does)."""
    message = choice.message
    out: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
    if message.tool_calls:
        out["tool_calls"] = [call.model_dump(mode="json") for call in message.tool_calls]
    return out


class History(BaseModel):
    """One conversation: the main one, or a side one (sub-agent, judge, summariser)."""

    model_config = ConfigDict(extra="allow")

    messages_and_choices: list[MessageOrChoice]
    tools: Tools | None = None

    def messages(self) -> list[dict[str, Any]]:
        """The conversation as plain OpenAI message dicts."""
        return [
            choice_to_message(item) if isinstance(item, Choice) else item
            for item in self.messages_and_choices
        ]

    def choices(self) -> list[Choice]:
        return [item for item in self.messages_and_choices if isinstance(item, Choice)]


class ChatExchange(BaseModel):
    """One recorded chat call, as ART 0.5.23 captures it: the request and its response."""

    model_config = ConfigDict(extra="allow")

    request: dict[str, Any]
    response: dict[str, Any]
    model: str | None = None
    start_time: str | None = None
    end_time: str | None = None

    def choices(self) -> list[Choice]:
        """The response's choices; ``prompt_token_ids`` of the response is copied onto each."""
        prompt_ids = self.response.get("prompt_token_ids")
        out = []
        for raw in self.response.get("choices") or []:
            if prompt_ids is not None and "prompt_token_ids" not in raw:
                raw = {**raw, "prompt_token_ids": prompt_ids}
            out.append(Choice.model_validate(raw))
        return out


class Exchanges(BaseModel):
    model_config = ConfigDict(extra="allow")

    chat_completions: list[ChatExchange] = Field(default_factory=list)


class Trajectory(History):
    """One rollout of an agent: its conversation(s), the reward, and what you want to keep.

    ART's newer capture shape, ``exchanges`` (request/response pairs), is accepted too: each
    exchange's response choices are model turns with the request's messages as their context.
    """

    messages_and_choices: list[MessageOrChoice] = Field(default_factory=list)
    additional_histories: list[History] = Field(default_factory=list)
    exchanges: Exchanges | None = None
    reward: float = 0.0
    initial_policy_version: int | None = None
    final_policy_version: int | None = None
    metrics: dict[str, float | int | bool] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Any JSON values (ART allows lists and objects too)."""
    logs: list[str] = Field(default_factory=list)

    def is_trainable(self) -> bool:
        """True when some model turn carries logprobs (what the RL trainer learns from)."""
        histories = [self, *self.additional_histories]
        choices = [c for h in histories for c in h.choices()]
        for exchange in self.exchanges.chat_completions if self.exchanges else []:
            choices += exchange.choices()
        return any(c.logprobs is not None for c in choices)

    def model_turns(self) -> int:
        """Assistant turns in all its conversations: 0 when nothing the model said was recorded
        (a rollout that nothing can train on)."""
        histories = [self, *self.additional_histories]
        turns = sum(m["role"] == "assistant" for h in histories for m in h.messages())
        exchanges = self.exchanges.chat_completions if self.exchanges else []
        return turns + sum(len(e.response.get("choices") or []) for e in exchanges)


class TrajectoryGroup(BaseModel):
    """Several rollouts of the same scenario: the unit group-relative advantages are taken over."""

    model_config = ConfigDict(extra="allow")

    trajectories: list[Trajectory]
    exceptions: list[dict[str, Any]] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float | int | bool] = Field(default_factory=dict)
    logs: list[str] = Field(default_factory=list)

    @property
    def rewards(self) -> list[float]:
        return [t.reward for t in self.trajectories]

    def reward_std(self) -> float:
        rewards = self.rewards
        if len(rewards) < 2:
            return 0.0
        mean = sum(rewards) / len(rewards)
        return math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))

    def has_signal(self, tolerance: float = 1e-9) -> bool:
        """False when every reward is equal: the group carries no gradient."""
        return self.reward_std() > tolerance
