"""The local backend's HTTP API: the same paths, shapes and errors as W&B's services."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from wandb_serverless.api.client import LOCAL_BACKEND
from wandb_serverless.local.api_tokens import add_token_routes
from wandb_serverless.local.api_training import adapter_name, add_training_routes
from wandb_serverless.local.engine import (
    DoneEvent,
    Engine,
    GenerationRequest,
    QueueFullError,
    TokenEvent,
)
from wandb_serverless.local.grammar import Constraint, GrammarError, Vocabulary
from wandb_serverless.local.guard import DEFAULT_MAX_BODY_BYTES, Guard
from wandb_serverless.local.loader import DEFAULT_ALIASES, LoadedModel
from wandb_serverless.local.protocol import (
    BadRequest,
    ChatCompletionRequest,
    Plan,
    TokenText,
    plan,
)
from wandb_serverless.local.state import PathOutsideError, State
from wandb_serverless.local.tools import ParsedCall, ToolStreamParser, parse_tool_calls
from wandb_serverless.local.trainer import TrainingWorker
from wandb_serverless.models import CheckpointRef, is_checkpoint

ARGUMENT_FRAGMENT = 16  # characters per streamed tool-argument delta
MODELS_SHOWN = 10  # in an unknown model's 404


@dataclass
class Backend:
    """Everything the routes need: the model, its engine, and what the server is configured with."""

    loaded: LoadedModel
    engine: Engine
    api_key: str
    state: State
    worker: TrainingWorker
    default_max_tokens: int = 512
    default_entity: str = "local"
    preprocess_timeout: float = 30.0
    aliases: tuple[str, ...] = ()  # more names the model answers to (--served-model-name)
    vocab: Vocabulary = field(init=False)
    token_text: TokenText = field(init=False)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        tokenizer, size = self.loaded.tokenizer, self.engine.vocab_size
        self.vocab = Vocabulary(tokenizer, size)
        self.token_text = TokenText(tokenizer, size)
        digest = hashlib.sha256(self.loaded.model_id.encode()).hexdigest()[:10]
        self.fingerprint = f"local-{digest}"

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    def trainable_base_models(self) -> set[str]:
        return {self.model_id, *DEFAULT_ALIASES, *self.aliases}

    def resolve_model(self, name: str | None) -> tuple[str, str] | None:
        """(adapter name, path) serving ``name``; None for the base model; unknown names 404.

        ``wandb-artifact:///e/p/name:stepN`` pins a step; ``:latest`` or no suffix is the newest
        checkpoint; ``:step0``, or a model with no checkpoint yet, is the base model.
        """
        if name in (None, self.model_id, *DEFAULT_ALIASES, *self.aliases):
            return None
        if not is_checkpoint(name):
            raise self._unknown(name)
        try:
            ref = CheckpointRef.parse(name)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        model = self.state.find_model(ref.entity, ref.project, ref.name)
        if model is None:
            raise self._unknown(name)
        if ref.step == 0:
            return None
        checkpoint = self.state.checkpoint(model.id, ref.step)
        if checkpoint is None:
            if ref.step is None:
                return None
            raise HTTPException(404, f"The model `{name}` has no checkpoint at step {ref.step}.")
        return adapter_name(checkpoint.id), checkpoint.path

    def _unknown(self, name: str) -> HTTPException:
        served = [*DEFAULT_ALIASES, *self.served_models()]
        shown = ", ".join(served[:MODELS_SHOWN])
        more = f" and {len(served) - MODELS_SHOWN} more" if len(served) > MODELS_SHOWN else ""
        return HTTPException(
            404, f"The model `{name}` does not exist. This server serves: {shown}{more}."
        )

    def prepare(self, body: ChatCompletionRequest) -> tuple[Plan, list[Constraint | None]]:
        """The engine plan and one grammar matcher per choice (runs on a worker thread)."""
        run = plan(
            body,
            self.loaded.tokenizer,
            context_length=self.engine.context_length,
            default_max_tokens=self.default_max_tokens,
            vocab_size=self.engine.vocab_size,
        )
        grammar = run.grammar
        return run, [self.vocab.constraint(grammar) if grammar else None for _ in range(body.n)]

    def served_models(self) -> list[str]:
        checkpoints = [
            str(CheckpointRef.of(m.entity, m.project, m.name, step))
            for m, step in self.state.all_checkpoints()
        ]
        return [self.model_id, *self.aliases, *checkpoints]


def _auth(request: Request) -> None:
    backend: Backend = request.app.state.backend
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), backend.api_key):
        raise HTTPException(401, "Authentication failed", headers={"WWW-Authenticate": "Bearer"})


def create_app(
    backend: Backend, *, docs: bool = False, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> FastAPI:
    """The API; ``docs`` turns on /docs, /redoc and /openapi.json (off: they need no key)."""
    app = FastAPI(
        title="wandb-serverless local backend",
        version="1",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.add_middleware(Guard, max_body_bytes=max_body_bytes)
    app.state.backend = backend
    authed = [Depends(_auth)]

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape without the echoed input: it can be huge, or NaN (not JSON)
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(UnicodeEncodeError)
    async def _not_unicode(_: Request, exc: UnicodeEncodeError) -> JSONResponse:
        # JSON may carry lone surrogates ("\ud800"); no store, file or tokenizer takes them
        return JSONResponse(
            {"detail": "the request contains text that is not valid Unicode (a lone surrogate)"},
            status_code=400,
        )

    @app.exception_handler(PathOutsideError)
    async def _outside(_: Request, exc: PathOutsideError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(GrammarError)
    async def _bad_grammar(_: Request, exc: GrammarError) -> JSONResponse:
        return JSONResponse({"detail": f"invalid output constraint: {exc}"}, status_code=400)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": backend.model_id, "engine": backend.engine.load}

    @app.get("/v1/system-check")
    async def system_check() -> JSONResponse:
        engine_ok = backend.engine.alive()
        database_ok = backend.state.healthy()
        body = {
            "api": True,
            "backend": LOCAL_BACKEND,  # how clients tell this server from W&B's
            "database": database_ok,
            "cpu_queue": {"success": engine_ok, "duration": 0.0, **backend.engine.load},
            "gpu_queue": {"success": True, "duration": 0.0, "available": False},
        }
        return JSONResponse(body, status_code=200 if engine_ok and database_ok else 503)

    @app.get("/v1/preview/base-models")
    async def base_models() -> list[str]:
        return [backend.model_id]

    @app.get("/v1/models", dependencies=authed)
    async def list_models() -> dict[str, Any]:
        created = int(backend.started)
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "wandb-serverless",
                "root": backend.model_id,
                "max_model_len": backend.engine.context_length,
            }
            for name in backend.served_models()
        ]
        return {"object": "list", "data": data}

    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        adapter = backend.resolve_model(body.model)
        # Rendering, tokenizing and compiling a grammar are CPU work: off the event loop, so
        # health and every other request stay responsive, and bounded in time.
        try:
            run, constraints = await asyncio.wait_for(
                asyncio.to_thread(backend.prepare, body), backend.preprocess_timeout
            )
        except TimeoutError:
            raise HTTPException(
                400, f"the request took over {backend.preprocess_timeout:.0f} s to prepare"
            ) from None
        call = _Call(backend, body, run, constraints, adapter)
        call.submit()
        if body.stream:
            return StreamingResponse(call.stream(), media_type="text/event-stream")
        watcher = asyncio.create_task(_cancel_on_disconnect(request, call))
        try:
            return await call.complete()
        finally:
            watcher.cancel()
            call.cancel()

    add_training_routes(app, backend, authed)
    add_token_routes(app, backend, authed)
    app.post("/v1/chat/completions", dependencies=authed)(chat)
    app.post("/v1/chat/completions/", dependencies=authed, include_in_schema=False)(chat)
    return app


async def _cancel_on_disconnect(request: Request, call: _Call) -> None:
    """Stop decoding a non-streaming request whose client went away (its body is read, so the
    next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    call.cancel()


class _Call:
    """One chat request in flight: n engine sequences feeding one asyncio queue."""

    def __init__(
        self,
        backend: Backend,
        body: ChatCompletionRequest,
        run: Plan,
        constraints: list[Constraint | None],
        adapter: tuple[str, str] | None,
    ) -> None:
        self.backend, self.body, self.plan = backend, body, run
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = body.model or backend.model_id
        self.queue: asyncio.Queue[tuple[int, TokenEvent | DoneEvent]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.requests: list[GenerationRequest] = []
        for index in range(body.n):
            params = run.params
            if params.seed is not None and index:
                params = type(params)(**{**params.__dict__, "seed": params.seed + index})
            constraint = constraints[index]

            def sink(event: TokenEvent | DoneEvent, index: int = index) -> None:
                loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

            name, path = adapter or (None, None)
            self.requests.append(
                GenerationRequest(run.prompt_ids, params, sink, constraint, name, path)
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

    def _logprob(self, event: TokenEvent) -> dict[str, Any]:
        as_ids = self.body.return_tokens_as_token_ids
        entry = self.backend.token_text.entry(event.token_id, event.logprob, as_ids)
        entry["top_logprobs"] = [
            {k: v for k, v in self.backend.token_text.entry(t, lp, as_ids).items()}
            for t, lp in event.top_logprobs
        ]
        return entry

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
            raise HTTPException(400, done.error)
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
            else:
                self._raise_error(event)
                done[index] = event
        choices = [self._choice(i, tokens[i], d) for i, d in enumerate(done) if d]
        body = {
            **self._envelope("chat.completion"),
            "choices": choices,
            "usage": self._usage(sum(len(t) for t in tokens)),
        }
        if self.body.return_token_ids:
            body["prompt_token_ids"] = self.plan.prompt_ids
        return body

    def _choice(self, index: int, events: list[TokenEvent], done: DoneEvent) -> dict[str, Any]:
        text = "".join(e.text for e in events) + done.text
        content: str | None = text
        calls: list[ParsedCall] = []
        if self.plan.tool_mode != "none":
            forced_cut = self.plan.tool_mode == "forced" and done.finish_reason == "length"
            content, calls = parse_tool_calls(text, self.plan.tool_names, cut_off=forced_cut)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [c.to_openai() for c in calls]
        finish = "tool_calls" if calls and done.finish_reason == "stop" else done.finish_reason
        choice: dict[str, Any] = {
            "index": index,
            "message": message,
            "logprobs": {"content": [self._logprob(e) for e in events]}
            if self.body.logprobs
            else None,
            "finish_reason": finish,
            "stop_reason": done.stop_reason,
        }
        if self.body.return_token_ids:
            choice["token_ids"] = [e.token_id for e in events]
        return choice

    # -- streaming ---------------------------------------------------------------------------

    def _chunk(self, index: int, delta: dict[str, Any], **extra: Any) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None, **extra}
        body = {**self._envelope("chat.completion.chunk"), "choices": [choice]}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def stream(self) -> AsyncIterator[str]:
        n = len(self.requests)
        parsers = [
            ToolStreamParser(self.plan.tool_names, forced=self.plan.tool_mode == "forced")
            if self.plan.tool_mode != "none"
            else None
            for _ in range(n)
        ]
        pending_lp: list[list[dict]] = [[] for _ in range(n)]
        pending_ids: list[list[int]] = [[] for _ in range(n)]
        tool_index = [0] * n
        called = [False] * n
        completion_tokens = 0
        finished = 0

        def extras(i: int) -> dict[str, Any]:
            out: dict[str, Any] = {}
            if self.body.logprobs:
                out["logprobs"] = {"content": pending_lp[i]}
                pending_lp[i] = []
            if self.body.return_token_ids:
                out["token_ids"] = pending_ids[i]
                pending_ids[i] = []
            return out

        def emit(i: int, pieces: list[str | ParsedCall]) -> list[str]:
            out = []
            for piece in pieces:
                if isinstance(piece, str):
                    if piece:
                        out.append(self._chunk(i, {"content": piece}, **extras(i)))
                    continue
                called[i] = True
                k = tool_index[i]
                tool_index[i] += 1
                head = {"index": k, "id": piece.id, "type": "function"}
                head["function"] = {"name": piece.name, "arguments": ""}
                out.append(self._chunk(i, {"tool_calls": [head]}, **extras(i)))
                args = piece.arguments
                for start in range(0, len(args), ARGUMENT_FRAGMENT):
                    fragment = {
                        "index": k,
                        "function": {"arguments": args[start : start + ARGUMENT_FRAGMENT]},
                    }
                    out.append(self._chunk(i, {"tool_calls": [fragment]}))
            return out

        try:
            for i in range(n):
                first: dict[str, Any] = {}
                if self.body.return_token_ids:
                    first["prompt_token_ids"] = self.plan.prompt_ids
                yield self._chunk(i, {"role": "assistant", "content": ""}, **first)
            while finished < n:
                i, event = await self.queue.get()
                if isinstance(event, TokenEvent):
                    completion_tokens += 1
                    if self.body.logprobs:
                        pending_lp[i].append(self._logprob(event))
                    pending_ids[i].append(event.token_id)
                    pieces = parsers[i].feed(event.text) if parsers[i] else [event.text]
                    for chunk in emit(i, pieces):
                        yield chunk
                    continue
                finished += 1
                if event.finish_reason == "error":
                    kind, code = (
                        ("invalid_request_error", 400)
                        if event.client_error
                        else ("server_error", 500)
                    )
                    error = {"message": event.error, "type": kind, "code": code}
                    yield f"data: {json.dumps({'error': error})}\n\n"
                    return
                parser = parsers[i]
                tail: list[str | ParsedCall] = [event.text]
                if parser:
                    tail = [*parser.feed(event.text), *parser.finish()]
                for chunk in emit(i, tail):
                    yield chunk
                reason = event.finish_reason
                if called[i] and reason == "stop":
                    reason = "tool_calls"
                yield self._chunk(
                    i, {}, finish_reason=reason, stop_reason=event.stop_reason, **extras(i)
                )
            options = self.body.stream_options
            if options is not None and options.include_usage:
                usage = {**self._envelope("chat.completion.chunk"), "choices": []}
                usage["usage"] = self._usage(completion_tokens)
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()
