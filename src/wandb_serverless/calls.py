"""One model call, the same for every adapter: build the request (asking for exact tokens when
the recorder wants them), post it, parse the reply once, and hand the parsed turn to the rollout
recorder (``rollouts.recorder.record_turn``: a no-op outside a rollout). The protocol itself is
``wandb_serverless.chat``, which knows nothing of rollouts.

    adapter ──request()──▶ chat.protocol ──complete()/stream()──▶ chat.transport ─▶ server
       ▲                                        │ chat.parse (once)
       └──────── Reply / Delta ─────────────────┴──▶ recorder.record_turn ─▶ Rollout ─▶ store
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import openai

from wandb_serverless.chat import transport
from wandb_serverless.chat.parse import (
    Completion,
    Delta,
    StreamAccumulator,
    StreamParser,
    as_dict,
    parse_completion,
)
from wandb_serverless.chat.protocol import LengthLimitError, build_request, check_finish
from wandb_serverless.rollouts.recorder import current_rollout, record_turn, tokens_wanted
from wandb_serverless.usage import record_usage


def request(*, params: dict[str, Any], **options: Any) -> dict[str, Any]:
    """``chat.build_request(params=..., **options)``, asking for logprobs and token ids when a
    rollout is open or a trace hook watches the call (unless the caller said no): the trainer
    needs them."""
    if tokens_wanted():
        asked = {k: v for k, v in params.items() if v is not None}
        params = {"logprobs": True, "return_token_ids": True, **asked}
    return build_request(params=params, **options)


@dataclass
class Reply:
    """A whole response: every choice parsed, and the body as it came."""

    raw: dict[str, Any]
    completions: list[Completion]


def complete(client: openai.OpenAI, request: dict[str, Any], *, role: str | None = None) -> Reply:
    """Post a non-streaming request; inside a rollout the first choice is recorded (with
    ``n > 1`` the others are counted on the rollout, see ``Rollout.note_unrecorded_choices``),
    labelled with ``role`` when given."""
    return _reply(request, transport.post(client, request), role)


async def acomplete(
    client: openai.AsyncOpenAI, request: dict[str, Any], *, role: str | None = None
) -> Reply:
    return _reply(request, await transport.post(client, request), role)


def _reply(request: dict[str, Any], raw: Any, role: str | None) -> Reply:
    completions = parse_completion(raw)
    record_reply(request, completions, role)
    for completion in completions:  # structured output the length limit cut: a clear error
        used = completion.usage.output_tokens if completion.usage else None
        check_finish(request, completion.finish_reason, used)
    return Reply(as_dict(raw), completions)


def record_reply(
    request: dict[str, Any], completions: list[Completion], role: str | None = None
) -> None:
    """Count a parsed response's usage and record its first choice as the rollout's turn."""
    if not completions:
        return
    first = completions[0]
    if first.usage is not None:  # the whole response's usage, on every choice
        record_usage(request.get("model"), first.usage.input_tokens, first.usage.output_tokens)
    choice = first.raw_choice
    record_turn(
        request["messages"],
        request.get("tools"),
        choice.get("message") or {},
        finish_reason=first.finish_reason,
        logprobs=choice.get("logprobs"),
        token_ids=choice.get("token_ids"),
        prompt_token_ids=first.metadata.get("prompt_token_ids"),
        model=request.get("model"),
        role=role,
    )
    run = current_rollout()
    if run is not None and len(completions) > 1:
        run.note_unrecorded_choices(len(completions) - 1)


class TurnStream:
    """A streamed turn: iterating gives each chunk's ``Delta``; ``turn`` holds the turn so far
    (when ``accumulate`` was asked, or a rollout is open: then it is recorded at the end)."""

    def __init__(
        self, request: dict[str, Any], chunks: Any, accumulate: bool, role: str | None = None
    ) -> None:
        self.request = request
        self.role = role
        self._chunks = chunks
        self._record = current_rollout() is not None
        self.turn: StreamAccumulator | None = (
            StreamAccumulator() if accumulate or self._record else None
        )
        self._parse = self.turn.add if self.turn is not None else StreamParser().parse

    def _delta(self, chunk: Any) -> Delta:
        delta = self._parse(chunk)
        if delta.usage is not None:
            usage = delta.usage
            record_usage(self.request.get("model"), usage.input_tokens, usage.output_tokens)
        try:
            check_finish(self.request, delta.finish_reason)
        except LengthLimitError:  # recorded first, as a non-streamed turn is, then raised
            self._finished()
            raise
        return delta

    def __iter__(self) -> Iterator[Delta]:
        try:
            for chunk in self._chunks:
                yield self._delta(chunk)
        finally:  # a consumer that stops early still releases the connection
            self._chunks.close()
        self._finished()

    async def __aiter__(self) -> AsyncIterator[Delta]:
        try:
            async for chunk in self._chunks:
                yield self._delta(chunk)
        finally:
            await self._chunks.close()
        self._finished()

    def _finished(self) -> None:
        turn = self.turn
        if self._record and turn is not None:
            self._record = False  # once: an error's recording is not repeated at the end
            record_streamed(self.request, turn, self.role)


def record_streamed(
    request: dict[str, Any], turn: StreamAccumulator, role: str | None = None
) -> None:
    """Record a streamed turn, accumulated from its chunks, as the rollout's turn."""
    record_turn(
        request["messages"],
        request.get("tools"),
        turn.message(),
        finish_reason=turn.finish_reason,
        logprobs={"content": turn.logprobs} if turn.logprobs else None,
        token_ids=turn.token_ids or None,
        prompt_token_ids=turn.prompt_token_ids,
        model=request.get("model"),
        role=role,
    )


def stream(
    client: openai.OpenAI,
    request: dict[str, Any],
    *,
    accumulate: bool = False,
    role: str | None = None,
) -> TurnStream:
    """Post a streaming request (sent now, its chunks read as the stream is iterated)."""
    return TurnStream(request, transport.post(client, request), accumulate, role)


async def astream(
    client: openai.AsyncOpenAI,
    request: dict[str, Any],
    *,
    accumulate: bool = False,
    role: str | None = None,
) -> TurnStream:
    """Post a streaming request; ``async for delta in await astream(...)``."""
    return TurnStream(request, await transport.post(client, request), accumulate, role)
