"""One error hierarchy for the W&B APIs, keyed by HTTP status.

Every error carries the server's ``detail``; none ever contains the API key.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "ServiceUnavailableError",
    "TrainingJobFailedError",
    "UnprocessableEntityError",
    "error_for_response",
]


class APIError(Exception):
    """Base class of every error this package raises for a W&B API call."""


class APIConnectionError(APIError):
    """The server could not be reached."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class APIStatusError(APIError):
    """The server answered with an error status."""

    status_code: int = 0

    def __init__(self, message: str, *, status_code: int, detail: Any, body: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail
        self.body = body


class BadRequestError(APIStatusError):
    """400: the request was malformed (e.g. the prompt is longer than the context)."""


class AuthenticationError(APIStatusError):
    """401: missing or invalid API key."""


class QuotaExceededError(APIStatusError):
    """402: the account is out of credits or over its spend cap. Not retried."""


class PermissionDeniedError(APIStatusError):
    """403: not allowed (or region not supported)."""


class NotFoundError(APIStatusError):
    """404: unknown model, checkpoint or job."""


class ConflictError(APIStatusError):
    """409: e.g. a model of that name already exists."""


class UnprocessableEntityError(APIStatusError):
    """422: the body failed validation; ``errors`` lists ``{loc, msg, type}`` items."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        return self.detail if isinstance(self.detail, list) else []


class RateLimitError(APIStatusError):
    """429: too many concurrent requests; ``retry_after`` is in seconds when the server says."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class InternalServerError(APIStatusError):
    """5xx: the server failed."""


class ServiceUnavailableError(InternalServerError):
    """503: overloaded, or a system check failed."""


class TrainingJobFailedError(APIError):
    """A training job ended with ``training_failed``."""

    def __init__(self, job_id: str, error_message: str) -> None:
        super().__init__(f"training job {job_id} failed: {error_message}")
        self.job_id = job_id
        self.error_message = error_message


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: QuotaExceededError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date), or None."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _format_detail(detail: Any) -> str:
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def _hint(request: httpx.Request, status: int) -> str:
    """What to do next, where the status alone does not say it."""
    from wandb_serverless.config import DEFAULT_TRAINING_BASE_URL, ENV_TRAINING_BASE_URL

    if status in (502, 524) and request.method == "POST":
        return (
            " (the gateway timed out: the server may still have done it; list before retrying "
            "a job)"
        )
    if status == 404 and str(request.url).startswith(DEFAULT_TRAINING_BASE_URL + "/"):
        return (
            f" (if every call 404s, the service may have moved: W&B Training is moving under "
            f"CoreWeave Forge, https://forge.coreweave.com/api/training/v1; set "
            f"{ENV_TRAINING_BASE_URL} or base_url=... to point the client there)"
        )
    return ""


def error_for_response(response: httpx.Response) -> APIStatusError:
    """The exception for an error response, carrying the server's detail."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    detail = body.get("detail", body.get("error", body)) if isinstance(body, dict) else body
    if isinstance(detail, dict) and "message" in detail:
        detail = detail["message"]
    status = response.status_code
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    request = response.request
    message = f"{request.method} {request.url.path} -> {status}: {_format_detail(detail)}"
    message += _hint(request, status)
    if cls is RateLimitError:
        return RateLimitError(
            message,
            status_code=status,
            detail=detail,
            body=body,
            retry_after=parse_retry_after(response.headers),
        )
    return cls(message, status_code=status, detail=detail, body=body)
