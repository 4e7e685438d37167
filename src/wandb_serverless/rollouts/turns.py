"""Recorded model calls, and the trajectory built from them: calls that extend the same
conversation merge into one history (ART's prefix rule), the others become side histories."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wandb_serverless.rollouts.guard import RECORDING_GUARD
from wandb_serverless.trajectory import (
    Choice,
    History,
    Trajectory,
    choice_to_message,
    message_or_choice,
)


class PendingTurn:
    """A model turn kept as the client returned it (an openai SDK response, a stream's chunks)
    and converted to ``make_choice`` data when first read, at the latest when the trajectory is
    built: recording a captured call then costs a reference, not a conversion. A conversion
    that fails is counted on ``RECORDING_GUARD`` and the turn left out (``None``)."""

    __slots__ = ("_convert", "_turn")

    def __init__(self, convert: Callable[[], dict[str, Any]]) -> None:
        self._convert: Callable[[], dict[str, Any]] | None = convert
        self._turn: dict[str, Any] | None = None

    def get(self) -> dict[str, Any] | None:
        convert, self._convert = self._convert, None
        if convert is not None:  # once; the client's objects are let go
            self._turn = RECORDING_GUARD.run(convert)
        return self._turn


@dataclass
class LLMCall:
    """One model call: what was sent, the tools offered, and the model's turn.

    ``choice`` is JSON data (what ``make_choice`` returns), a ``Choice``, or a ``PendingTurn``
    (converted when first read): recording keeps the server's data as it came, and it is
    validated once, when the trajectory is built.
    ``labels`` (model, role, step) go onto a trainable turn as its ``turn`` field, with its
    index among the rollout's calls and its step reward (``rollouts.credit``).
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    choice: dict[str, Any] | Choice | PendingTurn
    labels: dict[str, Any] = field(default_factory=dict)

    def turn(self) -> dict[str, Any] | Choice | None:
        """The model's turn (a pending one converted now; None if its conversion failed)."""
        choice = self.choice
        return choice.get() if isinstance(choice, PendingTurn) else choice

    def exact(self) -> bool:
        """Whether the turn came with the model's logprobs (a turn training can use)."""
        choice = self.turn()
        if isinstance(choice, Choice):
            return choice.logprobs is not None
        return choice is not None and choice.get("logprobs") is not None

    def tool_call_ids(self) -> list[str]:
        choice = self.turn()
        if choice is None:
            return []
        if isinstance(choice, Choice):
            return [c.id for c in choice.message.tool_calls or []]
        message = choice.get("message", choice)
        return [c.get("id") for c in message.get("tool_calls") or []]


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


def recorded_choice(message: dict[str, Any], **tokens: Any) -> dict[str, Any]:
    """An assistant ``message`` and its exact tokens (``make_choice``'s keyword arguments) as
    the recorded turn: fields the server left empty are dropped, ``content`` is always there."""
    body = {k: v for k, v in message.items() if k != "role" and v is not None}
    body.setdefault("content", None)
    return make_choice(body, **tokens)


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
        choice = call.turn()
        if choice is None:
            continue
        turn = _as_message(choice)
        for items, known, tools in merged:
            if (
                len(known) <= len(call.messages)
                and (tools or None) == (call.tools or None)
                and all(_same(k, m) for k, m in zip(known, call.messages, strict=False))
            ):
                new = call.messages[len(known) :]
                items += [*new, choice]
                known += [*new, turn]
                break
        else:
            merged.append(([*call.messages, choice], [*call.messages, turn], call.tools))
    histories = [History(messages_and_choices=items, tools=tools) for items, _, tools in merged]
    if not histories:
        return None, []
    return histories[0], histories[1:]


def build_trajectory(
    calls: list[LLMCall],
    tool_results: dict[str, dict[str, Any]],
    fields: dict[str, Any],
    step_rewards: dict[int, float] | None = None,
) -> Trajectory:
    """A Trajectory from recorded calls; tool results no call's messages carried go last.

    Each trainable turn gets its ``turn`` field: its labels, its index among the calls and its
    step reward. A call whose model turn does not validate (a server's malformed logprobs, say)
    is dropped, logged once and counted, as any recording failure: the rest is kept.
    """
    rewards = step_rewards or {}
    checked = [_validated(call, i, rewards.get(i)) for i, call in enumerate(calls)]
    main, others = merge_calls([call for call in checked if call is not None])
    if main is None:  # no model turn was recorded
        return Trajectory(**fields)
    seen = {m.get("tool_call_id") for m in main.messages()}
    items = [*main.messages_and_choices, *(r for k, r in tool_results.items() if k not in seen)]
    return Trajectory(
        messages_and_choices=items, tools=main.tools, additional_histories=others, **fields
    )


def _validated(call: LLMCall, index: int, reward: float | None) -> LLMCall | None:
    choice = call.turn()
    if choice is None:  # a pending turn whose conversion failed (counted by the guard)
        return None
    if call.exact():
        turn = {**call.labels, "index": index}
        if reward is not None:
            turn["reward"] = reward
        data = choice.model_dump(mode="json") if isinstance(choice, Choice) else choice
        choice = {**data, "turn": turn}
    checked = RECORDING_GUARD.run(message_or_choice, choice)
    return None if checked is None else LLMCall(call.messages, call.tools, checked, call.labels)
