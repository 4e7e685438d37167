"""The training API's resources, one class each. ``Client`` and ``AsyncClient`` share their
code: a method returns the result on ``Client`` and an awaitable of it on ``AsyncClient``
(whose ``_call`` is a coroutine). The ``Async*`` classes give the async side its types: the same
functions, their signatures kept, typed as returning awaitables (``_awaitable``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

from pydantic import BaseModel

from wandb_serverless.api.errors import TrainingJobFailedError
from wandb_serverless.api.types import (
    CheckpointResponse,
    CreateSFTTrainingJob,
    CreateTrainingJob,
    DeleteCheckpointsRequest,
    DeleteCheckpointsResponse,
    DeleteModelResponse,
    ExperimentalTrainingConfig,
    LogRequest,
    ModelCreate,
    ModelResponse,
    Page,
    RegisteredModel,
    SFTTrainingConfig,
    TrainingJobEvent,
    TrainingJobResponse,
)
from wandb_serverless.trajectory import TrajectoryGroup

#: Creating a model or a job can take minutes on W&B (over 100 s seen; ART's users report
#: 524s): the openai SDK's default timeout, not the 60 s of the other calls.
CREATE_TIMEOUT_S = 600.0


class Resource:
    def __init__(self, client: Any) -> None:
        self._client = client

    def _call(self, method: str, path: str, cast: Any = None, **kwargs: Any) -> Any:
        return self._client._call(method, path, cast=cast, **kwargs)


def _dump(body: BaseModel) -> dict[str, Any]:
    return body.model_dump(mode="json", exclude_none=True)


class Models(Resource):
    """``/preview/models``: register trainable models, delete them, log metrics."""

    def create(
        self,
        *,
        project: str,
        name: str,
        base_model: str,
        entity: str | None = None,
        return_existing: bool = False,
    ) -> ModelResponse:
        body = ModelCreate(
            project=project,
            name=name,
            base_model=base_model,
            entity=entity,
            return_existing=return_existing,
        )
        return self._call(
            "POST",
            "/preview/models",
            ModelResponse,
            json=_dump(body),
            timeout=CREATE_TIMEOUT_S,
            idempotent=return_existing,  # registering again returns the same model
        )

    def list(self) -> list[RegisteredModel]:
        """The registered models with their IDs. A local backend extension: W&B's training API
        has no list (404 there; ``create(..., return_existing=True)`` returns a model's ID)."""
        return self._call("GET", "/preview/models", list[RegisteredModel])

    def delete(self, model_id: str) -> DeleteModelResponse:
        return self._call("DELETE", f"/preview/models/{model_id}", DeleteModelResponse)

    def log(
        self, model_id: str, *, split: str, trajectory_groups: Iterable[TrajectoryGroup | dict]
    ) -> dict[str, Any]:
        body = LogRequest(split=split, trajectory_groups=list(trajectory_groups))
        return self._call("POST", f"/preview/models/{model_id}/log", dict, json=_dump(body))


class BaseModels(Resource):
    def list(self) -> list[str]:
        """Models this deployment can train."""
        return self._call("GET", "/preview/base-models", list)


class Checkpoints(Resource):
    """``/preview/models/{id}/checkpoints``."""

    def list(
        self,
        model_id: str,
        *,
        after: str | None = None,
        limit: int | None = None,
        order: str | None = None,
    ) -> Page[CheckpointResponse]:
        params = _params(after=after, limit=limit, order=order)
        path = f"/preview/models/{model_id}/checkpoints"
        return self._call("GET", path, Page[CheckpointResponse], params=params)

    def iter(
        self, model_id: str, *, order: str = "asc", page_size: int = 100
    ) -> Iterator[CheckpointResponse]:
        """Every checkpoint, paging with ``after``; an async iterator on AsyncClient."""

        def fetch(after: str | None) -> Page[CheckpointResponse]:
            return self.list(model_id, after=after, limit=page_size, order=order)

        return self._client._paginate(fetch)

    def delete(self, model_id: str, steps: Iterable[int]) -> DeleteCheckpointsResponse:
        body = DeleteCheckpointsRequest(steps=list(steps))
        path = f"/preview/models/{model_id}/checkpoints"
        return self._call("DELETE", path, DeleteCheckpointsResponse, json=_dump(body))


class Events(Resource):
    """``/preview/training-jobs/{id}/events``."""

    def list(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[TrainingJobEvent]:
        path = f"/preview/training-jobs/{job_id}/events"
        return self._call(
            "GET", path, Page[TrainingJobEvent], params=_params(after=after, limit=limit)
        )

    def iter(
        self, job_id: str, *, after: str | None = None, page_size: int = 100
    ) -> Iterator[TrainingJobEvent]:
        """Every event so far (``after`` is exclusive); an async iterator on AsyncClient."""

        def fetch(cursor: str | None) -> Page[TrainingJobEvent]:
            return self.list(job_id, after=cursor, limit=page_size)

        return self._client._paginate(fetch, start=after)

    def follow(
        self,
        job_id: str,
        *,
        after: str | None = None,
        poll_interval: float = 1.0,
        timeout: float | None = None,
    ) -> Iterator[TrainingJobEvent]:
        """Yield events as they come until ``training_ended``.

        ``training_failed`` raises :class:`TrainingJobFailedError` with the server's message.
        """
        return self._client._follow(self, job_id, after, poll_interval, timeout)


class TrainingJobs(Resource):
    """``/preview/training-jobs`` (RL) and ``/preview/sft-training-jobs``."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.events = Events(client)

    def create(
        self,
        *,
        model_id: str,
        trajectory_groups: Iterable[TrajectoryGroup | dict],
        experimental_config: ExperimentalTrainingConfig | dict | None = None,
    ) -> TrainingJobResponse:
        """Start an RL job on inline trajectory groups. Never retried once sent."""
        body = CreateTrainingJob(
            model_id=model_id,
            trajectory_groups=list(trajectory_groups),
            experimental_config=experimental_config,
        )
        return self._call(
            "POST",
            "/preview/training-jobs",
            TrainingJobResponse,
            json=_dump(body),
            timeout=CREATE_TIMEOUT_S,
        )

    def create_sft(
        self,
        *,
        model_id: str,
        training_data_url: str,
        config: SFTTrainingConfig | dict | None = None,
        experimental_config: dict[str, Any] | None = None,
    ) -> TrainingJobResponse:
        """Start an SFT job on a ``train.jsonl`` artifact."""
        body = CreateSFTTrainingJob(
            model_id=model_id,
            training_data_url=training_data_url,
            config=config,
            experimental_config=experimental_config,
        )
        path = "/preview/sft-training-jobs"
        return self._call(
            "POST", path, TrainingJobResponse, json=_dump(body), timeout=CREATE_TIMEOUT_S
        )

    def retrieve(self, job_id: str) -> TrainingJobResponse:
        return self._call("GET", f"/preview/training-jobs/{job_id}", TrainingJobResponse)


class LocalArtifacts(Resource):
    """The local backend's artifact store (W&B itself stores datasets with the ``wandb`` SDK)."""

    def publish(
        self,
        rows: Iterable[dict[str, Any]],
        *,
        entity: str,
        project: str,
        name: str,
        filename: str = "train.jsonl",
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, str]:
        """Store rows as a new version: ``{"url": "wandb-artifact:///e/p/name:vN", "version"}``."""
        body = {"rows": list(rows), "filename": filename, "metadata": metadata or {}}
        return self._call("POST", f"/local/artifacts/{entity}/{project}/{name}", dict, json=body)


class LocalAliases(Resource):
    """Named checkpoint aliases on the local backend (``:production``), served like ``:latest``.
    On W&B an alias is a W&B artifact alias, set with the ``wandb`` SDK
    (``wandb_serverless.aliases``)."""

    def list(self, model_id: str) -> dict[str, int]:
        return self._call("GET", f"/local/models/{model_id}/aliases", dict)

    def set(self, model_id: str, alias: str, step: int) -> dict[str, Any]:
        body = {"step": step}
        return self._call("PUT", f"/local/models/{model_id}/aliases/{alias}", dict, json=body)

    def delete(self, model_id: str, alias: str) -> dict[str, Any]:
        return self._call("DELETE", f"/local/models/{model_id}/aliases/{alias}", dict)


class LocalCheckpoints(Resource):
    """Local extension: a checkpoint copied as the newest, so that training continues from it
    (``POST /local/models/{id}/checkpoints/{step}/copy``). W&B's API has no counterpart."""

    def copy(self, model_id: str, step: int) -> dict[str, Any]:
        """``{"model_id", "step": the copy's step, "copied_from_step"}``."""
        return self._call("POST", f"/local/models/{model_id}/checkpoints/{int(step)}/copy", dict)


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def check_event(job_id: str, event: TrainingJobEvent) -> None:
    """A ``training_failed`` event raises ``TrainingJobFailedError`` with the server's message."""
    if event.type == "training_failed":
        message = str(event.data.get("error_message") or "no error message")
        raise TrainingJobFailedError(job_id, message)


P = ParamSpec("P")
T = TypeVar("T")


def _awaitable(
    method: Callable[Concatenate[Any, P], T],
) -> Callable[Concatenate[Any, P], Awaitable[T]]:
    """``method`` itself, typed as it behaves on ``AsyncClient``: it returns an awaitable."""
    return method  # type: ignore[return-value]


def _async_iterator(
    method: Callable[Concatenate[Any, P], Iterator[T]],
) -> Callable[Concatenate[Any, P], AsyncIterator[T]]:
    """``method`` itself, typed as it behaves on ``AsyncClient``: an async iterator."""
    return method  # type: ignore[return-value]


class AsyncModels(Resource):
    __doc__ = Models.__doc__
    create = _awaitable(Models.create)
    list = _awaitable(Models.list)
    delete = _awaitable(Models.delete)
    log = _awaitable(Models.log)


class AsyncBaseModels(Resource):
    list = _awaitable(BaseModels.list)


class AsyncCheckpoints(Resource):
    __doc__ = Checkpoints.__doc__
    list = _awaitable(Checkpoints.list)
    iter = _async_iterator(Checkpoints.iter)
    delete = _awaitable(Checkpoints.delete)


class AsyncEvents(Resource):
    __doc__ = Events.__doc__
    list = _awaitable(Events.list)
    iter = _async_iterator(Events.iter)
    follow = _async_iterator(Events.follow)


class AsyncTrainingJobs(Resource):
    __doc__ = TrainingJobs.__doc__

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.events = AsyncEvents(client)

    create = _awaitable(TrainingJobs.create)
    create_sft = _awaitable(TrainingJobs.create_sft)
    retrieve = _awaitable(TrainingJobs.retrieve)


class AsyncLocalArtifacts(Resource):
    __doc__ = LocalArtifacts.__doc__
    publish = _awaitable(LocalArtifacts.publish)


class AsyncLocalAliases(Resource):
    __doc__ = LocalAliases.__doc__
    list = _awaitable(LocalAliases.list)
    set = _awaitable(LocalAliases.set)
    delete = _awaitable(LocalAliases.delete)


class AsyncLocalCheckpoints(Resource):
    __doc__ = LocalCheckpoints.__doc__
    copy = _awaitable(LocalCheckpoints.copy)
