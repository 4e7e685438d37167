"""The HTTP core shared by Client and AsyncClient: auth headers, retries, error mapping.

Retry policy: GET, PUT and DELETE retry on 408/429/5xx (502 and Cloudflare's 524 included) and
connection errors with exponential backoff and jitter, honouring ``Retry-After``, at most
``max_retries`` times. A POST is retried only when the connection failed before anything was
sent (a job must never be created twice), or when it is idempotent: model registration with
``return_existing``.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from wandb_serverless.api.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    error_for_response,
    parse_retry_after,
)
from wandb_serverless.version import __version__

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 524})
IDEMPOTENT_METHODS = frozenset({"GET", "PUT", "DELETE", "HEAD", "OPTIONS"})
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 60.0


@dataclass
class RetryPolicy:
    max_retries: int = 3
    initial_backoff_s: float = 0.5
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to sleep before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        backoff = min(MAX_BACKOFF_S, self.initial_backoff_s * 2**attempt)
        return backoff * (0.5 + 0.5 * self.rng.random())

    def should_retry(
        self, method: str, attempt: int, *, status: int | None, sent: bool, idempotent: bool = False
    ) -> bool:
        if attempt >= self.max_retries:
            return False
        if not sent:  # connection never established: nothing reached the server
            return True
        if method not in IDEMPOTENT_METHODS and not idempotent:
            return False
        return status is None or status in RETRY_STATUSES


def user_agent() -> str:
    return f"wandb-serverless/{__version__}"


def build_headers(api_key: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {api_key}",
        "User-Agent": user_agent(),
        "Accept": "application/json",
        **(extra or {}),
    }


def _classify(exc: httpx.HTTPError) -> tuple[APIConnectionError, bool]:
    """The error to raise for a transport failure (naming the URL), and whether the request
    was sent."""
    try:
        url: object = exc.request.url.copy_with(query=None)
    except RuntimeError:  # an error raised before the request was built
        url = "the server"
    if isinstance(exc, httpx.ConnectTimeout):
        return APITimeoutError(f"connection to {url} timed out: {exc}"), False
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request to {url} timed out: {exc}"), True
    if isinstance(exc, httpx.ConnectError):
        return APIConnectionError(f"could not connect to {url}: {exc}"), False
    return APIConnectionError(f"connection error with {url}: {exc}"), True


@dataclass
class _Attempt:
    """The outcome of one try: a response or an error, and what to do next."""

    response: httpx.Response | None
    error: APIStatusError | APIConnectionError | None
    retry_after: float | None = None
    status: int | None = None
    sent: bool = True


def _outcome(response: httpx.Response | None, exc: httpx.HTTPError | None) -> _Attempt:
    if exc is not None:
        error, sent = _classify(exc)
        return _Attempt(None, error, sent=sent)
    assert response is not None
    if response.is_success:
        return _Attempt(response, None, status=response.status_code)
    return _Attempt(
        response,
        error_for_response(response),
        retry_after=parse_retry_after(response.headers),
        status=response.status_code,
    )


def _redact(error: Exception, secret: str) -> Exception:
    """Scrub the key from an error's text, in case a server echoed it back."""
    if secret and error.args and secret in str(error.args[0]):
        error.args = (str(error.args[0]).replace(secret, "***"), *error.args[1:])
    if secret and isinstance(getattr(error, "detail", None), str):
        error.detail = error.detail.replace(secret, "***")  # type: ignore[attr-defined]
    return error


class _Retrying:
    """Decides, try after try, between returning a response, raising, or sleeping."""

    def __init__(self, policy: RetryPolicy, method: str, secret: str, idempotent: bool) -> None:
        self.policy, self.method, self.secret, self.attempt = policy, method, secret, 0
        self.idempotent = idempotent

    def handle(
        self, response: httpx.Response | None, exc: httpx.HTTPError | None
    ) -> httpx.Response | float:
        outcome = _outcome(response, exc)
        if outcome.error is None:
            assert outcome.response is not None
            return outcome.response
        if not self.policy.should_retry(
            self.method,
            self.attempt,
            status=outcome.status,
            sent=outcome.sent,
            idempotent=self.idempotent,
        ):
            raise _redact(outcome.error, self.secret)
        delay = self.policy.delay(self.attempt, outcome.retry_after)
        self.attempt += 1
        return delay


class SyncHTTP:
    def __init__(self, client: httpx.Client, policy: RetryPolicy, secret: str = "") -> None:
        self.client, self.policy, self.secret = client, policy, secret

    def request(
        self, method: str, url: str, *, idempotent: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """``idempotent``: a POST that is safe to repeat (model registration with
        ``return_existing``) retries like a GET."""
        retrying = _Retrying(self.policy, method, self.secret, idempotent)
        while True:
            try:
                result = retrying.handle(self.client.request(method, url, **kwargs), None)
            except httpx.HTTPError as exc:
                result = retrying.handle(None, exc)
            if isinstance(result, httpx.Response):
                return result
            time.sleep(result)


class AsyncHTTP:
    def __init__(self, client: httpx.AsyncClient, policy: RetryPolicy, secret: str = "") -> None:
        self.client, self.policy, self.secret = client, policy, secret

    async def request(
        self, method: str, url: str, *, idempotent: bool = False, **kwargs: Any
    ) -> httpx.Response:
        retrying = _Retrying(self.policy, method, self.secret, idempotent)
        while True:
            try:
                result = retrying.handle(await self.client.request(method, url, **kwargs), None)
            except httpx.HTTPError as exc:
                result = retrying.handle(None, exc)
            if isinstance(result, httpx.Response):
                return result
            await asyncio.sleep(result)
