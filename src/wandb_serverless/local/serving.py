"""Serving one chat completion: the request becomes an engine plan (off the event loop), ``n``
engine sequences run, and their events become an OpenAI response or an SSE stream (text, tool
calls parsed from the model's markup, logprobs, token ids, usage)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import Request
from fastapi.exceptions import HTTPException
from fastapi.responses import StreamingResponse

from wandb_serverless.local.backend import Backend
from wandb_serverless.local.engine_api import (
    DoneEvent,
    GenerationRequest,
    PromptEvent,
    QueueFullError,
    TokenEvent,
)
from wandb_serverless.local.protocol import BadRequest, ChatCompletionRequest, Plan
from wandb_serverless.local.tools import ParsedCall, ToolStreamParser, parse_tool_calls, text_of

ARGUMENT_FRAGMENT = 16  # characters per streamed tool-argument delta


async def serve_chat(backend: Backend, body: ChatCompletionRequest, request: Request) -> Any:
    """``POST /v1/chat/completions``: a response body, or a streaming response."""
    adapter = backend.resolve_model(body.model)
    run, compiled = await backend.off_loop(backend.prepare, body)
    call = ChatCall(backend, body, run, compiled, adapter)
    call.submit()
    if body.stream:
        return StreamingResponse(call.stream(), media_type="text/event-stream")
    watcher = asyncio.create_task(_cancel_on_disconnect(request, call))
    try:
        return await call.complete()
    finally:
        watcher.cancel()
        call.cancel()


async def _cancel_on_disconnect(request: Request, call: ChatCall) -> None:
    """Stop decoding a non-streaming request whose client went away (its body is read, so the
    next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    call.cancel()


class ChatCall:
    """One chat request in flight: n engine sequences feeding one asyncio queue."""

    def __init__(
        self,
        backend: Backend,
        body: ChatCompletionRequest,
        run: Plan,
        compiled: Any,
        adapter: tuple[str, str] | None,
    ) -> None:
        self.backend, self.body, self.plan = backend, body, run
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = body.model or backend.model_id
        self.queue: asyncio.Queue[tuple[int, TokenEvent | DoneEvent | PromptEvent]] = (
            asyncio.Queue()
        )
        self.prompt_logprobs: list[dict[str, Any] | None] | None = None
        self.echo = _echoed(body)
        options = body.stream_options  # streams only: usage on every chunk, tokens so far
        self.continuous_usage = bool(
            options and options.include_usage and options.continuous_usage_stats
        )
        self.completion_tokens = 0
        self.first_chunk = True
        loop = asyncio.get_running_loop()
        name, path = adapter or (None, None)
        self.requests: list[GenerationRequest] = []
        for index in range(body.n):
            params = run.params
            if index:  # the prompt is scored once; choice i samples with seed + i
                seed = None if params.seed is None else params.seed + index
                params = replace(params, seed=seed, prompt_logprobs=None)

            def sink(event: TokenEvent | DoneEvent | PromptEvent, index: int = index) -> None:
                loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

            self.requests.append(
                GenerationRequest(
                    run.prompt_ids, params, sink, run.constraint, compiled, name, path
                )
            )

    def submit(self) -> None:
        try:
            for request in self.requests:
                self.backend.engine.submit(request)
        except QueueFullError:
            self.cancel()
            raise HTTPException(
                429, "Concurrency limit reached for requests", headers={"Retry-After": "1"}
            ) from None

    def cancel(self) -> None:
        for request in self.requests:
            request.cancelled.set()

    # -- shared pieces -----------------------------------------------------------------------

    def logprob(self, event: TokenEvent) -> dict[str, Any]:
        as_ids = self.body.return_tokens_as_token_ids
        entry = self.backend.token_text.entry(event.token_id, event.logprob, as_ids)
        entry["top_logprobs"] = [
            self.backend.token_text.entry(t, lp, as_ids) for t, lp in event.top_logprobs
        ]
        return entry

    def score_prompt(self, event: PromptEvent) -> None:
        """vLLM's ``prompt_logprobs``: None for the first token, then per token a map of token
        id to ``{logprob, rank, decoded_token}``: the prompt's token and the top k."""
        as_ids = self.body.return_tokens_as_token_ids
        text = self.backend.token_text
        scored: list[dict[str, Any] | None] = [None]
        for (token, logprob, rank), top in event.logprobs:
            entry: dict[str, dict[str, Any]] = {
                str(t): {"logprob": lp, "rank": r + 1} for r, (t, lp) in enumerate(top)
            }
            entry[str(token)] = {"logprob": logprob, "rank": rank}
            for key, value in entry.items():
                value["decoded_token"] = text.decoded(int(key), as_ids)
            scored.append(entry)
        self.prompt_logprobs = scored

    def _usage(self, completion_tokens: int) -> dict[str, Any]:
        prompt = len(self.plan.prompt_ids)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": max(r.cached_tokens for r in self.requests)},
        }

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.backend.fingerprint,
        }

    @staticmethod
    def _raise_error(done: DoneEvent) -> None:
        if done.finish_reason != "error":
            return
        if done.client_error:
            raise BadRequest(done.error or "the request's parameters left nothing to sample")
        raise HTTPException(
            500, f"The server had an error while processing your request: {done.error}"
        )

    # -- non-streaming -----------------------------------------------------------------------

    async def complete(self) -> dict[str, Any]:
        n = len(self.requests)
        tokens: list[list[TokenEvent]] = [[] for _ in range(n)]
        done: list[DoneEvent | None] = [None] * n
        while any(d is None for d in done):
            index, event = await self.queue.get()
            if isinstance(event, TokenEvent):
                tokens[index].append(event)
            elif isinstance(event, PromptEvent):
                self.score_prompt(event)
            else:
                self._raise_error(event)
                done[index] = event
        choices = [self._choice(i, tokens[i], d) for i, d in enumerate(done) if d]
        body = {
            **self._envelope("chat.completion"),
            "choices": choices,
            "usage": self._usage(sum(len(t) for t in tokens)),
            # present, null unless asked, as vLLM's response
            "prompt_logprobs": self.prompt_logprobs,
            "prompt_token_ids": self.plan.prompt_ids if self.body.return_token_ids else None,
        }
        return body

    def _choice(self, index: int, events: list[TokenEvent], done: DoneEvent) -> dict[str, Any]:
        text = "".join(e.text for e in events) + done.text
        content: str | None = text
        calls: list[ParsedCall] = []
        if self.plan.tool_mode != "none":
            forced_cut = self.plan.tool_mode == "forced" and done.finish_reason == "length"
            content, calls = parse_tool_calls(text, self.plan.tool_names, cut_off=forced_cut)
            if self.plan.tool_mode == "forced":
                content = content or ""  # vLLM: a forced call's message has content ""
        if self.echo:
            content = self.echo + (content or "")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [c.to_openai() for c in calls]
        finish = "tool_calls" if calls and done.finish_reason == "stop" else done.finish_reason
        choice: dict[str, Any] = {
            "index": index,
            "message": message,
            "logprobs": {"content": [self.logprob(e) for e in events]}
            if self.body.logprobs
            else None,
            "finish_reason": finish,
            "stop_reason": done.stop_reason,
        }
        choice["token_ids"] = [e.token_id for e in events] if self.body.return_token_ids else None
        return choice

    # -- streaming ---------------------------------------------------------------------------

    def chunk(self, index: int, delta: dict[str, Any], **extra: Any) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None, **extra}
        body = {**self._envelope("chat.completion.chunk"), "choices": [choice]}
        if self.first_chunk:  # vLLM: the prompt's token ids ride on the stream's first chunk
            self.first_chunk = False
            if self.body.return_token_ids:
                body["prompt_token_ids"] = self.plan.prompt_ids
        if self.continuous_usage:
            body["usage"] = self._usage(self.completion_tokens)
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def stream(self) -> AsyncIterator[str]:
        options = self.body.stream_options
        choices = [_StreamedChoice(self, i) for i in range(len(self.requests))]
        finished = 0
        try:
            for choice in choices:
                for chunk in choice.opening():
                    yield chunk
            while finished < len(choices):
                i, event = await self.queue.get()
                if isinstance(event, PromptEvent):
                    continue  # never asked of a stream (plan() refuses it)
                if isinstance(event, TokenEvent):
                    self.completion_tokens += 1
                    for chunk in choices[i].token(event):
                        yield chunk
                    continue
                finished += 1
                if event.finish_reason == "error":
                    yield _error_chunk(event)
                    return
                for chunk in choices[i].done(event):
                    yield chunk
            if options is not None and options.include_usage:
                usage = {**self._envelope("chat.completion.chunk"), "choices": []}
                usage["usage"] = self._usage(self.completion_tokens)
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()


def _echoed(body: ChatCompletionRequest) -> str:
    """vLLM's ``echo``: the final message's text when it is the assistant's (the one being
    continued), put before the completion; nothing otherwise."""
    last = body.messages[-1]
    if not body.echo or last.get("role") != "assistant":
        return ""
    try:
        return text_of(last.get("content")) or ""
    except Exception:  # content the template rejects is a 400 before this point
        return ""


def _error_chunk(event: DoneEvent) -> str:
    """A failure after the stream began, in vLLM's shape (the status is already 200)."""
    kind, code = ("BadRequestError", 400) if event.client_error else ("InternalServerError", 500)
    error = {"message": event.error, "type": kind, "param": None, "code": code}
    return f"data: {json.dumps({'error': error})}\n\n"


class _StreamedChoice:
    """One choice of a stream: its tool-call parser and the logprobs and token ids not yet
    sent (they ride on the next chunk that carries text or a call)."""

    def __init__(self, call: ChatCall, index: int) -> None:
        self.call, self.index = call, index
        plan = call.plan
        self.parser = (
            ToolStreamParser(plan.tool_names, forced=plan.tool_mode == "forced")
            if plan.tool_mode != "none"
            else None
        )
        self.logprobs: list[dict[str, Any]] = []
        self.token_ids: list[int] = []
        self.tool_index = 0
        self.last_text = ""  # the last token's text: it goes out with the finish reason

    def opening(self) -> list[str]:
        chunks = [self.call.chunk(self.index, {"role": "assistant", "content": ""})]
        if self.call.echo:
            chunks.append(self.call.chunk(self.index, {"content": self.call.echo}))
        return chunks

    def token(self, event: TokenEvent) -> list[str]:
        if self.call.body.logprobs:
            self.logprobs.append(self.call.logprob(event))
        self.token_ids.append(event.token_id)
        if event.last:  # held for done(): the last content chunk carries the finish reason
            self.last_text = event.text
            return []
        return self._emit(self.parser.feed(event.text) if self.parser else [event.text])

    def done(self, event: DoneEvent) -> list[str]:
        text = self.last_text + event.text
        tail: list[str | ParsedCall] = [text]
        if self.parser:
            tail = [*self.parser.feed(text), *self.parser.finish()]
        last = tail.pop() if tail and isinstance(tail[-1], str) else ""
        chunks = self._emit(tail)
        reason = event.finish_reason
        if self.tool_index and reason == "stop":
            reason = "tool_calls"
        chunks.append(
            self.call.chunk(
                self.index,
                {} if self.tool_index and not last else {"content": last},  # "" as vLLM
                finish_reason=reason,
                stop_reason=event.stop_reason,
                **self._extras(),
            )
        )
        return chunks

    def _extras(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.call.body.logprobs:
            out["logprobs"] = {"content": self.logprobs}
            self.logprobs = []
        if self.call.body.return_token_ids:
            out["token_ids"] = self.token_ids
            self.token_ids = []
        return out

    def _emit(self, pieces: list[str | ParsedCall]) -> list[str]:
        out = []
        for piece in pieces:
            if isinstance(piece, str):
                if piece:
                    out.append(self.call.chunk(self.index, {"content": piece}, **self._extras()))
                continue
            k, self.tool_index = self.tool_index, self.tool_index + 1
            head = {"index": k, "id": piece.id, "type": "function"}
            head["function"] = {"name": piece.name, "arguments": ""}
            out.append(self.call.chunk(self.index, {"tool_calls": [head]}, **self._extras()))
            args = piece.arguments
            for start in range(0, len(args), ARGUMENT_FRAGMENT):
                fragment = {
                    "index": k,
                    "function": {"arguments": args[start : start + ARGUMENT_FRAGMENT]},
                }
                out.append(self.call.chunk(self.index, {"tool_calls": [fragment]}))
        return out
