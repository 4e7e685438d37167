"""Typed clients for the W&B Serverless Training API; chat goes through the official openai SDK.

``Client`` and ``AsyncClient`` share one implementation of every resource: a resource method
returns the parsed result on ``Client`` and an awaitable of it on ``AsyncClient`` (typed so).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal, TypeVar, overload

import httpx
import openai
from pydantic import BaseModel, SecretStr, TypeAdapter

from wandb_serverless.api._http import (
    AsyncHTTP,
    RetryPolicy,
    SyncHTTP,
    build_headers,
    user_agent,
)
from wandb_serverless.api.errors import (
    APIStatusError,
    APITimeoutError,
    error_for_response,
)
from wandb_serverless.api.resources import (
    AsyncBaseModels,
    AsyncCheckpoints,
    AsyncEvents,
    AsyncLocalAliases,
    AsyncLocalArtifacts,
    AsyncLocalCheckpoints,
    AsyncModels,
    AsyncTrainingJobs,
    BaseModels,
    Checkpoints,
    Events,
    LocalAliases,
    LocalArtifacts,
    LocalCheckpoints,
    Models,
    TrainingJobs,
    check_event,
)
from wandb_serverless.api.types import (
    ModelInfo,
    SystemCheck,
    TrainingJobEvent,
)
from wandb_serverless.config import Settings

M = TypeVar("M", bound=BaseModel)
DEFAULT_TIMEOUT_S = 60.0
#: What a local backend calls itself in ``/v1/system-check``.
LOCAL_BACKEND = "wandb-serverless-local"
DEFAULT_MAX_RETRIES = 3


@overload
def openai_client(
    settings: Settings,
    *,
    async_client: Literal[False] = False,
    base_url: str | None = None,
    timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT_S,
    max_retries: int = 2,
    default_headers: dict[str, str] | None = None,
    http_client: httpx.Client | None = None,
) -> openai.OpenAI: ...
@overload
def openai_client(
    settings: Settings,
    *,
    async_client: Literal[True],
    base_url: str | None = None,
    timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT_S,
    max_retries: int = 2,
    default_headers: dict[str, str] | None = None,
    http_client: httpx.AsyncClient | None = None,
) -> openai.AsyncOpenAI: ...
@overload
def openai_client(
    settings: Settings,
    *,
    async_client: bool,
    base_url: str | None = None,
    timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT_S,
    max_retries: int = 2,
    default_headers: dict[str, str] | None = None,
    http_client: httpx.Client | httpx.AsyncClient | None = None,
) -> openai.OpenAI | openai.AsyncOpenAI: ...
def openai_client(
    settings: Settings,
    *,
    async_client: bool = False,
    base_url: str | None = None,
    timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT_S,
    max_retries: int = 2,
    default_headers: dict[str, str] | None = None,
    http_client: httpx.Client | httpx.AsyncClient | None = None,
) -> openai.OpenAI | openai.AsyncOpenAI:
    """An ``openai.OpenAI`` (or ``AsyncOpenAI``) for W&B chat.

    Key, base URL, organization and project are all set from ``settings``, never from the
    ambient OPENAI_* variables; W&B's ``entity/project`` goes in the ``OpenAI-Project`` header.
    """
    cls: Any = openai.AsyncOpenAI if async_client else openai.OpenAI
    project = settings.openai_project  # raises MissingEntityError before anything is sent
    headers = {"User-Agent": user_agent(), **(default_headers or {})}
    client: openai.OpenAI | openai.AsyncOpenAI = cls(
        api_key=settings.require_api_key(),
        base_url=base_url or settings.inference_base_url,
        organization=None,
        project=project,
        timeout=timeout,
        max_retries=max_retries,
        default_headers=headers,
        http_client=http_client,
    )
    # The SDK fills these from OPENAI_ORG_ID / OPENAI_PROJECT_ID / OPENAI_CUSTOM_HEADERS when
    # they are None; W&B requests must carry only what the user configured for W&B.
    client.organization = None
    client.project = project
    client._custom_headers = dict(headers)
    return client


def _parse(response: httpx.Response, cast: Any) -> Any:
    if cast is None:
        return None
    if not response.content:
        data: Any = {}
    else:
        try:
            data = response.json()
        except ValueError:
            raise APIStatusError(
                f"{response.request.method} {response.request.url.path}: response is not JSON",
                status_code=response.status_code,
                detail=response.text[:200],
            ) from None
    if (isinstance(cast, type) and issubclass(cast, BaseModel)) or hasattr(cast, "model_validate"):
        return cast.model_validate(data)
    if getattr(cast, "__origin__", None) is not None:  # list[Model] and the like
        return TypeAdapter(cast).validate_python(data)
    return data


class _BaseClient:
    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        *,
        base_url: str | None = None,
        entity: str | None = None,
        project: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: dict[str, str] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or Settings.resolve(
            api_key=api_key, base_url=base_url, entity=entity, project=project
        )
        self.base_url = (base_url or self.settings.training_base_url).rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self._headers = build_headers(self.settings.require_api_key(), default_headers)
        self._policy = RetryPolicy(max_retries=max_retries)
        self._local: bool | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _call(self, method: str, path: str, cast: Any = None, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _paginate(self, fetch: Callable[[str | None], Any], start: str | None = None) -> Any:
        raise NotImplementedError


class Client(_BaseClient):
    """Synchronous client. ``Client()`` reads WANDB_API_KEY and talks to W&B's training API.

    Point it at a local backend with ``Client(api_key=..., base_url=backend.base_url)``.
    """

    def __init__(self, *args: Any, http_client: httpx.Client | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.models = Models(self)
        self.base_models = BaseModels(self)
        self.checkpoints = Checkpoints(self)
        self.training_jobs = TrainingJobs(self)
        self.local_artifacts = LocalArtifacts(self)
        self.local_aliases = LocalAliases(self)
        self.local_checkpoints = LocalCheckpoints(self)
        self._owns_http = http_client is None
        self._httpx = http_client or httpx.Client(timeout=self.timeout)
        self._http = SyncHTTP(self._httpx, self._policy, self.settings.require_api_key())

    def _call(self, method: str, path: str, cast: Any = None, **kwargs: Any) -> Any:
        url = self.base_url + path
        return _parse(self._http.request(method, url, headers=self._headers, **kwargs), cast)

    def _paginate(self, fetch: Callable[[str | None], Any], start: str | None = None) -> Iterator:
        cursor = start
        while True:
            page = fetch(cursor)
            yield from page.data
            if not page.has_more or not page.data:
                return
            cursor = page.data[-1].id

    def _follow(
        self, events: Events, job_id: str, after: Any, poll: float, timeout: Any
    ) -> Iterator[TrainingJobEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in events.iter(job_id, after=after):
                after = event.id
                check_event(job_id, event)
                yield event
                if event.is_terminal:
                    return
            if deadline is not None and time.monotonic() > deadline:
                raise APITimeoutError(f"training job {job_id} did not finish within {timeout}s")
            time.sleep(poll)

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health", dict)

    def system_check(self) -> SystemCheck:
        """The service's self-check; a failing check (503) is returned, not raised."""
        response = self._httpx.get(self.base_url + "/system-check", headers=self._headers)
        if response.status_code not in (200, 503):
            raise error_for_response(response)
        return SystemCheck.model_validate(response.json())

    def list_models(self) -> list[ModelInfo]:
        """``GET /models`` of the inference host: the base models and checkpoints it serves."""
        url = self.settings.inference_base_url + "/models"
        data = _parse(self._http.request("GET", url, headers=self._headers), dict)["data"]
        return [ModelInfo.model_validate(m) for m in data]

    def is_local(self) -> bool:
        """Whether this is a wandb-serverless local backend: ``Settings.local``, else the
        server's ``/v1/system-check`` says so (asked once)."""
        if self._local is None:
            self._local = self.settings.local
        if self._local is None:
            self._local = (self.system_check().model_extra or {}).get("backend") == LOCAL_BACKEND
        return self._local

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        """An ``openai.OpenAI`` for chat with the same key and project, on the inference
        endpoint (the same server when ``base_url`` was given)."""
        return openai_client(self.settings, **kwargs)

    def close(self) -> None:
        if self._owns_http:
            self._httpx.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_BaseClient):
    """Asynchronous client: every resource method returns an awaitable."""

    def __init__(self, *args: Any, http_client: httpx.AsyncClient | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.models = AsyncModels(self)
        self.base_models = AsyncBaseModels(self)
        self.checkpoints = AsyncCheckpoints(self)
        self.training_jobs = AsyncTrainingJobs(self)
        self.local_artifacts = AsyncLocalArtifacts(self)
        self.local_aliases = AsyncLocalAliases(self)
        self.local_checkpoints = AsyncLocalCheckpoints(self)
        self._owns_http = http_client is None
        self._httpx = http_client or httpx.AsyncClient(timeout=self.timeout)
        self._http = AsyncHTTP(self._httpx, self._policy, self.settings.require_api_key())

    async def _call(self, method: str, path: str, cast: Any = None, **kwargs: Any) -> Any:
        url = self.base_url + path
        return _parse(await self._http.request(method, url, headers=self._headers, **kwargs), cast)

    async def _paginate(
        self, fetch: Callable[[str | None], Any], start: str | None = None
    ) -> AsyncIterator:
        cursor = start
        while True:
            page = await fetch(cursor)
            for item in page.data:
                yield item
            if not page.has_more or not page.data:
                return
            cursor = page.data[-1].id

    async def _follow(
        self, events: AsyncEvents, job_id: str, after: Any, poll: float, timeout: Any
    ) -> AsyncIterator[TrainingJobEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            async for event in events.iter(job_id, after=after):
                after = event.id
                check_event(job_id, event)
                yield event
                if event.is_terminal:
                    return
            if deadline is not None and time.monotonic() > deadline:
                raise APITimeoutError(f"training job {job_id} did not finish within {timeout}s")
            await asyncio.sleep(poll)

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/health", dict)

    def openai(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai_client(self.settings, async_client=True, **kwargs)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._httpx.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
