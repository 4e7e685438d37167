"""Error bodies in the shape of the API a path belongs to.

The inference routes (chat completions, models, tokenize, vLLM's probes) answer as vLLM does,
which is what W&B Inference serves: ``{"error": {"message", "type", "param", "code"}}``, and a
request that fails validation is a 400 there (so the openai SDK raises ``BadRequestError`` here as
on W&B). The training API keeps FastAPI's shape that its seed documents: ``{"detail": ...}``,
and 422 with ``[{"loc", "msg", "type"}]`` for a body that fails validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

INFERENCE_PATHS = ("/v1/chat/", "/v1/models", "/tokenize", "/detokenize", "/health", "/version")
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    413: "BadRequestError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def speaks_vllm(path: str) -> bool:
    """Whether ``path`` is an inference route (vLLM's error shape)."""
    return path.startswith(INFERENCE_PATHS) and not path.startswith("/v1/models/")


def error_body(path: str, status: int, message: Any, param: str | None = None) -> dict[str, Any]:
    if not speaks_vllm(path):
        return {"detail": message}
    kind = ERROR_TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
    return {"error": {"message": str(message), "type": kind, "param": param, "code": status}}


def validation_message(errors: Sequence[Any]) -> str:
    """Pydantic's errors as one message that names each field, what is wrong and the error type
    (``less_than_equal``...), as vLLM's 400 does; never the input itself (it can be huge)."""
    lines = [f"{len(errors)} validation error{'s' if len(errors) != 1 else ''} for the request"]
    for error in errors:
        parts = [str(part) for part in error.get("loc", ()) if part != "body"]
        location = "body" if error.get("type") == "json_invalid" else ".".join(parts) or "body"
        lines.append(f"{location}: {error.get('msg', '')} [type={error.get('type')}]")
    return "\n".join(lines)


def first_param(errors: Sequence[Any]) -> str | None:
    """The top-level field of the first error (``param`` of vLLM's shape)."""
    for error in errors:
        location = [part for part in error.get("loc", ()) if part != "body"]
        if location and isinstance(location[0], str):
            return location[0]
    return None
