"""Captured streams (``wandb_serverless.capture``): the caller gets the SDK's own stream, its
chunks without the logprobs and token ids that only capture asked for (as a whole reply's);
capture keeps the bytes as they arrive (a reference to each network read) and parses the turn
from them when the trajectory is built.

Measured (bench/RESULTS.md, "Trace hooks"): wrapping the stream and taking the turn down as the
chunks passed cost ~2 µs a chunk for the wrapper's generator and as much again for reading the
chunk, on a call the framework has just left (cold caches). Building each chunk by the SDK's
``construct_type`` rather than through its client's parse spares ~2.8 µs a chunk (the parse's
dispatch), more than capture's own work on it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import pydantic
from openai._base_client import BaseClient
from openai._models import construct_type
from openai.types.chat import ChatCompletionChunk

from wandb_serverless.chat.parse import StreamAccumulator
from wandb_serverless.rollouts.recorder import RECORDING_GUARD, Rollout, current_rollout


class _Received:
    """A stream's bytes so far, and what to do with them once it ends."""

    __slots__ = ("on_end", "parts", "run")

    def __init__(self, on_end: Callable[[bytes], None], run: Rollout | None) -> None:
        self.parts: list[bytes] = []
        self.on_end: Callable[[bytes], None] | None = on_end
        self.run = run

    def end(self) -> None:
        on_end, self.on_end = self.on_end, None  # once (the SDK and the caller may both close)
        raw, self.parts = b"".join(self.parts), []
        # recorded only if the server finished it ([DONE]) and its rollout is still the one
        # open here: a stream abandoned or cut (closed later, maybe elsewhere) is not
        if (
            on_end is not None
            and raw.rstrip().endswith(b"[DONE]")
            and current_rollout() is self.run
        ):
            on_end(raw)


class _AsAsked:
    """The SDK client as one stream sees it: each chunk is built without the keys in ``drop``
    (what only capture asked for; the SDK's objects for a token's logprob were most of what
    asking for them cost a stream: ~3 µs a chunk, measured). The chunk is built from the
    SDK's own JSON, just read, as the SDK builds it; the turn is recorded from the bytes."""

    __slots__ = ("_client", "_process_response_data")

    def __init__(self, client: Any, drop: frozenset[str]) -> None:
        self._client = client
        self._process_response_data = _parse_as_asked(client, drop)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _parse_as_asked(client: Any, drop: frozenset[str]) -> Callable[..., Any]:
    """The client's parse of a chunk, without the keys in ``drop``. A chunk is built as the
    SDK's parse builds it, by ``construct_type``, without the dispatch before it (~2.8 µs a
    chunk, measured: more than taking the keys out); anything else (a strict client's chunk,
    a client whose parse is its own) goes to the client's parse."""
    client_parse = client._process_response_data
    top = tuple(drop & _TOP_LEVEL)  # vLLM puts the prompt's ids on the first chunk
    keys = tuple(drop - _TOP_LEVEL)  # and each token's logprob and id in its choice
    direct = (  # the SDK's own parse, not a client's override of it, and not a strict one
        getattr(client_parse, "__func__", None) is BaseClient._process_response_data
        and getattr(client, "_strict_response_validation", True) is False
    )

    def parse(*, data: Any, cast_to: Any, response: Any) -> Any:
        if type(data) is dict:  # anything else goes to the SDK as it came, as without capture
            for key in top:
                data.pop(key, None)
            choices = data.get("choices")
            for choice in choices if type(choices) is list else ():
                if type(choice) is dict:
                    for key in keys:
                        choice.pop(key, None)
            if cast_to is ChatCompletionChunk and direct:
                try:
                    return construct_type(type_=cast_to, value=data)
                except pydantic.ValidationError:
                    pass  # the client's parse raises the SDK's own error for it
        return client_parse(data=data, cast_to=cast_to, response=response)

    return parse


_TOP_LEVEL = frozenset({"prompt_token_ids"})


def tap(stream: Any, on_end: Callable[[bytes], None], drop: frozenset[str]) -> Any:
    """``stream`` (the SDK's ``Stream`` or ``AsyncStream``, not read yet) with its bytes kept
    as they arrive and its chunks built without the keys in ``drop``; ``on_end(raw)`` runs
    once, when the SDK closes the response at the end of a stream the server finished (in the
    caller's context, as the SDK reads ``[DONE]``)."""
    if drop:  # the SDK's stream reads its client's parse when first iterated, not before
        stream._client = _AsAsked(stream._client, drop)
    response = stream.response
    received = _Received(on_end, current_rollout())
    if isinstance(stream, openai.AsyncStream):
        aiter_bytes, aclose = response.aiter_bytes, response.aclose

        async def atee(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
            async for part in aiter_bytes(*args, **kwargs):
                received.parts.append(part)
                yield part

        async def aclosing() -> None:
            try:
                await aclose()
            finally:
                RECORDING_GUARD.run(received.end)

        setattr(response, "aiter_bytes", atee)  # noqa: B010 (this response's own, not the class's)
        setattr(response, "aclose", aclosing)  # noqa: B010
        return stream
    iter_bytes, close = response.iter_bytes, response.close

    def tee(*args: Any, **kwargs: Any) -> Iterator[bytes]:
        for part in iter_bytes(*args, **kwargs):
            received.parts.append(part)
            yield part

    def closing() -> None:
        try:
            close()
        finally:
            RECORDING_GUARD.run(received.end)

    setattr(response, "iter_bytes", tee)  # noqa: B010
    setattr(response, "close", closing)  # noqa: B010
    return stream


def sse_data(raw: bytes) -> Iterator[str]:
    """The data of each server-sent event in ``raw`` (its ``data:`` lines joined), up to
    ``[DONE]``."""
    for event in raw.decode().replace("\r\n", "\n").split("\n\n"):
        lines = [line[5:] for line in event.split("\n") if line.startswith("data:")]
        if lines:
            data = "\n".join(line[1:] if line.startswith(" ") else line for line in lines)
            if data.startswith("[DONE]"):
                return
            yield data


def stream_chunks(raw: bytes) -> Iterator[dict[str, Any]]:
    """The chunks of a finished stream; a ValueError for an error event or a chunk that is not
    a JSON object (the SDK raised to the caller for the first; neither is a turn)."""
    for data in sse_data(raw):
        chunk = json.loads(data)
        if not isinstance(chunk, dict) or chunk.get("error"):
            raise ValueError(f"a streamed event is not a chunk of a turn: {data[:200]!r}")
        yield chunk


def accumulate(raw: bytes) -> StreamAccumulator:
    """A finished stream's turn: text, reasoning, tool calls, logprobs, token ids, usage."""
    turn = StreamAccumulator()
    for chunk in stream_chunks(raw):
        turn.add(chunk)
    if not all(isinstance(entry, dict) for entry in turn.logprobs):
        raise ValueError("a streamed chunk's logprobs are not a list of tokens")
    return turn
