"""Captured streams (``wandb_serverless.capture``): the SDK's stream handed on chunk by chunk,
and the turn taken down as plain values as the chunks pass, for the recorder at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from wandb_serverless.chat.parse import StreamAccumulator, as_dict, reasoning_text
from wandb_serverless.rollouts.recorder import RECORDING_GUARD, recorded_choice


class StreamTurn:
    """A streamed turn taken down as its chunks pass, as plain values: text, reasoning,
    tool-call fragments, logprobs, token ids. Holding the SDK's chunk objects (or any object
    of them) until the end made the caller's stream ~10 µs a chunk slower (measured,
    bench/RESULTS.md: the memory they hold), converting each chunk whole as it passed, more."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []  # fragments, merged by index at the end
        self.logprobs: list[tuple[Any, ...]] = []
        self.token_ids: list[int] = []
        self.prompt_token_ids: list[int] | None = None
        self.finish_reason: str | None = None
        self.usage: Any = None

    def add(self, chunk: Any) -> None:
        # attributes only (``__pydantic_extra__`` is what ``model_extra`` returns, without a
        # property call): this runs for every chunk, between the SDK's own work on it
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.__pydantic_extra__:
            self._extra(chunk.__pydantic_extra__)
        choices = chunk.choices
        if not choices:
            return
        choice = choices[0]
        delta = choice.delta
        if delta.content:
            self.text.append(delta.content)
        if delta.__pydantic_extra__:
            self.reasoning.append(reasoning_text(delta.__pydantic_extra__) or "")
        if delta.tool_calls:
            self.tool_calls += [as_dict(call) for call in delta.tool_calls]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        if choice.logprobs is not None and choice.logprobs.content:
            self.logprobs += [
                (e.token, e.logprob, e.bytes, e.top_logprobs) for e in choice.logprobs.content
            ]
        if choice.__pydantic_extra__:
            self._extra(choice.__pydantic_extra__)

    def _extra(self, extra: dict[str, Any]) -> None:
        self.token_ids += extra.get("token_ids") or []
        if extra.get("prompt_token_ids") is not None:
            self.prompt_token_ids = extra["prompt_token_ids"]

    def choice(self, exact: bool) -> dict[str, Any]:
        """The turn as ``recorded_choice`` data (what ``record_later`` converts to)."""
        turn = StreamAccumulator()  # merges the tool-call fragments as for our adapters
        delta = {"content": "".join(self.text), "reasoning": "".join(self.reasoning)}
        turn.add({"choices": [{"delta": {**delta, "tool_calls": self.tool_calls}}]})
        logprobs = [
            {"token": t, "logprob": p, "bytes": b, "top_logprobs": [as_dict(x) for x in top or []]}
            for t, p, b, top in self.logprobs
        ]
        return recorded_choice(
            turn.message(),
            finish_reason=self.finish_reason,
            logprobs={"content": logprobs} if exact and logprobs else None,
            token_ids=self.token_ids or None,
            prompt_token_ids=self.prompt_token_ids,
        )


class RecordedStream:
    """A ``Stream`` / ``AsyncStream`` that hands on every chunk and records the turn at the end."""

    def __init__(self, stream: Any, on_end: Callable[[StreamTurn], None]) -> None:
        self._stream = stream
        self._on_end: Callable[[StreamTurn], None] | None = on_end
        self._turn: StreamTurn | None = StreamTurn()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _add(self, chunk: Any) -> Any:
        if self._turn is not None:
            try:
                self._turn.add(chunk)
            except Exception as exc:  # a chunk it cannot read: no turn is recorded (counted)
                self._turn = None
                RECORDING_GUARD.failed(exc)
        return chunk

    def _end(self) -> None:
        on_end, self._on_end = self._on_end, None  # once
        if on_end is not None and self._turn is not None:
            on_end(self._turn)

    def __iter__(self) -> Iterator[Any]:
        turn = self._turn
        for chunk in self._stream:  # _add() inlined: one call less a chunk
            if turn is not None:
                try:
                    turn.add(chunk)
                except Exception as exc:
                    turn = self._turn = None
                    RECORDING_GUARD.failed(exc)
            yield chunk
        self._end()

    def __next__(self) -> Any:
        try:
            return self._add(next(self._stream))
        except StopIteration:
            self._end()
            raise

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for chunk in self._stream:
            yield self._add(chunk)
        self._end()

    async def __anext__(self) -> Any:
        try:
            return self._add(await self._stream.__anext__())
        except StopAsyncIteration:
            self._end()
            raise

    def __enter__(self) -> RecordedStream:
        self._stream.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stream.__exit__(*exc)

    async def __aenter__(self) -> RecordedStream:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._stream.__aexit__(*exc)
