"""openai's errors as langchain-core's model errors, the way partner packages map them."""

from __future__ import annotations

import openai
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelPermissionDeniedError,
    ModelRateLimitError,
    ModelTimeoutError,
)


def map_error(exc: openai.APIError) -> Exception:
    """openai errors → langchain-core's model errors (both isinstance checks keep working)."""
    message = _message(exc)
    if isinstance(exc, openai.APITimeoutError):
        cls: type[Exception] = ModelTimeoutError
    elif isinstance(exc, openai.APIConnectionError):
        cls = ModelConnectionError
    elif isinstance(exc, openai.AuthenticationError):
        cls = ModelAuthenticationError
    elif isinstance(exc, openai.PermissionDeniedError):
        cls = ModelPermissionDeniedError
    elif isinstance(exc, openai.NotFoundError):
        cls = ModelNotFoundError
    elif isinstance(exc, openai.RateLimitError):
        cls = ModelRateLimitError
    elif isinstance(exc, openai.BadRequestError):
        cls = (
            ContextOverflowError
            if "maximum context length" in message
            else ModelInvalidRequestError
        )
    else:
        cls = ModelAPIError
    mapped = _combined(cls, type(exc))(message)
    mapped.__dict__.update(exc.__dict__)
    return mapped


def _message(exc: openai.APIError) -> str:
    """The error's text with the server's own words: openai 3 puts only an OpenAI-shaped
    ``{"error": {"message"}}`` in it, not FastAPI's ``{"detail"}`` (W&B's shape)."""
    message = str(exc)
    body = exc.body
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail not in message:
        message = f"{message} - {detail}"
    return message


_COMBINED: dict[tuple[type[Exception], type[Exception]], type[Exception]] = {}


def _combined(langchain_cls: type[Exception], sdk_cls: type[Exception]) -> type[Exception]:
    """A subclass of both, so ``except openai.RateLimitError`` and ``except ModelRateLimitError``
    both catch it (langchain-core's convention for provider errors). One class per pair: the
    pairs are a handful of fixed classes, so the cache is bounded."""
    key = (langchain_cls, sdk_cls)
    if key not in _COMBINED:
        _COMBINED[key] = type(
            langchain_cls.__name__, (langchain_cls, sdk_cls), {"__init__": Exception.__init__}
        )
    return _COMBINED[key]
