"""The local backend's HTTP API: the same paths, shapes and errors as W&B's services. One
router per API (``api_*.py``), as vLLM's server is laid out; the serving of a chat completion
is ``serving.py``, the shared state ``backend.py``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from wandb_serverless.local import api_chat, api_models, api_system, api_tokens, api_training
from wandb_serverless.local.backend import Backend
from wandb_serverless.local.errors import error_body, first_param, speaks_vllm, validation_message
from wandb_serverless.local.grammar import GrammarError
from wandb_serverless.local.guard import DEFAULT_MAX_BODY_BYTES, Guard
from wandb_serverless.local.protocol import BadRequest
from wandb_serverless.local.state import PathOutsideError

__all__ = ["Backend", "create_app"]


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

    def answer(request: Request, status: int, message: Any, **kw: Any) -> JSONResponse:
        body = error_body(request.url.path, status, message, kw.pop("param", None))
        return JSONResponse(body, status_code=status, **kw)

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return answer(request, 400, str(exc), param=exc.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if speaks_vllm(request.url.path):  # vLLM: a 400 whose message names field and type
            return answer(request, 400, validation_message(errors), param=first_param(errors))
        # FastAPI's shape without the echoed input: it can be huge, or NaN (not JSON)
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in errors
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return answer(request, exc.status_code, exc.detail, headers=exc.headers)

    @app.exception_handler(UnicodeEncodeError)
    async def _not_unicode(request: Request, exc: UnicodeEncodeError) -> JSONResponse:
        # JSON may carry lone surrogates ("\ud800"); no store, file or tokenizer takes them
        message = "the request contains text that is not valid Unicode (a lone surrogate)"
        return answer(request, 400, message)

    @app.exception_handler(PathOutsideError)
    async def _outside(request: Request, exc: PathOutsideError) -> JSONResponse:
        return answer(request, 400, str(exc))

    @app.exception_handler(GrammarError)
    async def _bad_grammar(request: Request, exc: GrammarError) -> JSONResponse:
        return answer(request, 400, f"invalid output constraint: {exc}")

    for api in (api_system, api_chat, api_tokens, api_models, api_training):
        app.include_router(api.router)
    return app
