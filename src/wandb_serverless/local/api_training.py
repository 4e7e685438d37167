"""W&B's ``/v1/preview`` training-jobs API, served locally: RL and SFT jobs, their status and
events, and (a local extension) publishing a dataset into the artifact store."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import HTTPException
from pydantic import BaseModel, Field

from wandb_serverless.api.types import CreateSFTTrainingJob, CreateTrainingJob
from wandb_serverless.local.api_models import model_or_404
from wandb_serverless.local.artifacts import publish_dataset
from wandb_serverless.local.backend import Backend, backend_of, require_key
from wandb_serverless.local.checks import invalid, require_finite
from wandb_serverless.local.state import page
from wandb_serverless.models import NAME_RULE, ArtifactRef, is_valid_name

router = APIRouter(dependencies=[Depends(require_key)])


class PublishDataset(BaseModel):
    """Local extension: publish a dataset into the artifact store (``train.jsonl`` rows)."""

    rows: list[dict[str, Any]] = Field(min_length=1)
    filename: Literal["train.jsonl", "trajectories.jsonl"] = "train.jsonl"
    metadata: dict[str, Any] = Field(default_factory=dict)


def _submit(backend: Backend, model_id: str, kind: str, body: BaseModel) -> dict[str, Any]:
    model_or_404(backend, model_id)
    job = backend.state.create_job(model_id, kind, body.model_dump(mode="json"))
    backend.worker.notify()
    return {"id": job.id}


@router.post("/v1/preview/training-jobs")
async def create_rl_job(
    body: CreateTrainingJob, backend: Backend = Depends(backend_of)
) -> dict[str, Any]:
    if not body.trajectory_groups:
        raise invalid(["body", "trajectory_groups"], "at least one group is required")
    require_finite(body.trajectory_groups)
    return _submit(backend, body.model_id, "rl", body)


@router.post("/v1/preview/sft-training-jobs")
async def create_sft_job(
    body: CreateSFTTrainingJob, backend: Backend = Depends(backend_of)
) -> dict[str, Any]:
    url = body.training_data_url
    where = ["body", "training_data_url"]
    if url.startswith("file://"):
        if backend.worker.sft_data_dir is None:
            raise invalid(
                where,
                "file:// datasets are refused: publish the data to the artifact store, or "
                "start the server with --sft-data-dir",
            )
    else:
        try:
            ArtifactRef.parse(url)
        except ValueError as exc:
            raise invalid(where, str(exc)) from None
    return _submit(backend, body.model_id, "sft", body)


@router.get("/v1/preview/training-jobs/{job_id}")
async def get_job(job_id: str, backend: Backend = Depends(backend_of)) -> dict[str, Any]:
    job = backend.state.get_job(job_id)
    if job is None:
        raise HTTPException(404, f"Training job {job_id} not found")
    return {"id": job.id, "model_id": job.model_id, "status": job.status}


@router.get("/v1/preview/training-jobs/{job_id}/events")
async def job_events(
    job_id: str,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    backend: Backend = Depends(backend_of),
) -> dict[str, Any]:
    if backend.state.get_job(job_id) is None:
        raise HTTPException(404, f"Training job {job_id} not found")
    return page(backend.state.events(job_id), after, limit)


@router.post("/v1/local/artifacts/{entity}/{project}/{name}")
async def publish(
    entity: str,
    project: str,
    name: str,
    body: PublishDataset,
    backend: Backend = Depends(backend_of),
) -> dict[str, Any]:
    for label, value in (("entity", entity), ("project", project), ("name", name)):
        if not is_valid_name(value):
            raise invalid(["path", label], f"use {NAME_RULE}")
    url = publish_dataset(
        backend.state,
        entity,
        project,
        name,
        body.rows,
        filename=body.filename,
        metadata=body.metadata,
    )
    return {"url": url, "version": url.rsplit(":", 1)[1]}
