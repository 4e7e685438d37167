"""Models, checkpoints, logging and training jobs: W&B's ``/v1/preview`` API, served locally."""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi import Body, FastAPI, Query
from fastapi.exceptions import HTTPException
from pydantic import BaseModel, Field

from wandb_serverless.api.types import (
    CreateSFTTrainingJob,
    CreateTrainingJob,
    DeleteCheckpointsRequest,
    LogRequest,
    ModelCreate,
)
from wandb_serverless.local.state import ModelRow, State, page
from wandb_serverless.models import NAME_RULE, ArtifactRef, is_valid_name
from wandb_serverless.rollouts.trajectory import TrajectoryGroup


class PublishDataset(BaseModel):
    """Local extension: publish a dataset into the artifact store (``train.jsonl`` rows)."""

    rows: list[dict[str, Any]] = Field(min_length=1)
    filename: Literal["train.jsonl", "trajectories.jsonl"] = "train.jsonl"
    metadata: dict[str, Any] = Field(default_factory=dict)


def invalid(location: list[str | int], message: str) -> HTTPException:
    """A 422 in FastAPI's own shape: ``{"detail": [{"loc", "msg", "type"}]}``."""
    return HTTPException(422, [{"loc": location, "msg": message, "type": "value_error"}])


def require_finite(groups: list[TrajectoryGroup]) -> None:
    """Rewards and metrics must be numbers: a NaN poisons training and every average."""
    for g, group in enumerate(groups):
        for t, trajectory in enumerate(group.trajectories):
            where = ["body", "trajectory_groups", g, "trajectories", t]
            if not math.isfinite(trajectory.reward):
                raise invalid([*where, "reward"], "must be a finite number")
            for key, value in trajectory.metrics.items():
                if not math.isfinite(value):
                    raise invalid([*where, "metrics", key], "must be a finite number")


def adapter_name(checkpoint_id: str) -> str:
    return f"ckpt-{checkpoint_id}"


def log_metrics(request: LogRequest) -> dict[str, float]:
    """Per split: average reward, within-group reward std, exception rate, numeric metrics."""
    split = request.split
    rewards: list[float] = []
    stds: list[float] = []
    exceptions = 0
    sums: dict[str, list[float]] = {}
    for group in request.trajectory_groups:
        rewards += group.rewards
        stds.append(group.reward_std())
        exceptions += len(group.exceptions)
        for trajectory in group.trajectories:
            for key, value in trajectory.metrics.items():
                sums.setdefault(key, []).append(float(value))
    total = len(rewards) + exceptions
    metrics = {
        f"{split}/reward": sum(rewards) / len(rewards) if rewards else 0.0,
        f"{split}/reward_std_dev": sum(stds) / len(stds) if stds else 0.0,
        f"{split}/exception_rate": exceptions / total if total else 0.0,
    }
    metrics.update({f"{split}/{k}": sum(v) / len(v) for k, v in sums.items()})
    return metrics


def add_training_routes(app: FastAPI, backend: Any, dependencies: list[Any]) -> None:
    state: State = backend.state

    def model_or_404(model_id: str) -> ModelRow:
        model = state.get_model(model_id)
        if model is None:
            raise HTTPException(404, f"Model {model_id} not found")
        return model

    @app.post("/v1/preview/models", dependencies=dependencies)
    async def create_model(body: ModelCreate) -> dict[str, Any]:
        entity = body.entity or backend.default_entity
        for label, value in (("entity", entity), ("project", body.project), ("name", body.name)):
            if not is_valid_name(value):
                raise invalid(["body", label], f"use {NAME_RULE}")
        if body.base_model not in backend.trainable_base_models():
            raise HTTPException(
                400,
                f"base model {body.base_model!r} is not served here; this backend trains {backend.model_id!r}",
            )
        existing = state.find_model(entity, body.project, body.name)
        if existing is not None:
            if not body.return_existing:
                raise HTTPException(
                    409, f"Model '{body.name}' already exists in {entity}/{body.project}"
                )
            return existing.as_response()
        return state.create_model(entity, body.project, body.name, backend.model_id).as_response()

    @app.get("/v1/preview/models", dependencies=dependencies)
    async def list_models() -> list[dict[str, Any]]:
        """Local extension (W&B's API has no list): the registered models, oldest first."""
        return [
            {**m.as_response(), "latest_step": state.latest_step(m.id)} for m in state.all_models()
        ]

    @app.delete("/v1/preview/models/{model_id}", dependencies=dependencies)
    async def delete_model(model_id: str) -> dict[str, Any]:
        model_or_404(model_id)
        for checkpoint in state.checkpoints(model_id):
            backend.engine.drop_adapter(adapter_name(checkpoint.id))
        count = state.delete_model(model_id)
        shutil.rmtree(state.adapters_dir / model_id, ignore_errors=True)
        return {"model_id": model_id, "deleted_checkpoints": count, "deleted_run": True}

    @app.get("/v1/preview/models/{model_id}/checkpoints", dependencies=dependencies)
    async def list_checkpoints(
        model_id: str,
        after: str | None = None,
        limit: int = Query(20, ge=1, le=100),
        order: Literal["asc", "desc"] = "asc",
    ) -> dict[str, Any]:
        model_or_404(model_id)
        items = [
            {"id": c.id, "step": c.step, "metrics": state.metrics(model_id, c.step)}
            for c in state.checkpoints(model_id, order)
        ]
        return page(items, after, limit)

    @app.delete("/v1/preview/models/{model_id}/checkpoints", dependencies=dependencies)
    async def delete_checkpoints(
        model_id: str, body: DeleteCheckpointsRequest = Body(...)
    ) -> dict[str, Any]:
        model_or_404(model_id)
        deleted, missing = state.delete_checkpoints(model_id, body.steps)
        for checkpoint in deleted:
            backend.engine.drop_adapter(adapter_name(checkpoint.id))
            shutil.rmtree(checkpoint.path, ignore_errors=True)
        return {"deleted_count": len(deleted), "not_found_steps": missing}

    @app.post("/v1/preview/models/{model_id}/log", dependencies=dependencies)
    async def log(model_id: str, body: LogRequest) -> dict[str, Any]:
        model_or_404(model_id)
        require_finite(body.trajectory_groups)
        state.set_metrics(model_id, state.latest_step(model_id), log_metrics(body))
        return {}

    def submit(model_id: str, kind: str, body: BaseModel) -> dict[str, Any]:
        model_or_404(model_id)
        job = state.create_job(model_id, kind, body.model_dump(mode="json"))
        backend.worker.notify()
        return {"id": job.id}

    @app.post("/v1/preview/training-jobs", dependencies=dependencies)
    async def create_rl_job(body: CreateTrainingJob) -> dict[str, Any]:
        if not body.trajectory_groups:
            raise HTTPException(
                422,
                [
                    {
                        "loc": ["body", "trajectory_groups"],
                        "msg": "at least one group is required",
                        "type": "value_error",
                    }
                ],
            )
        require_finite(body.trajectory_groups)
        return submit(body.model_id, "rl", body)

    @app.post("/v1/preview/sft-training-jobs", dependencies=dependencies)
    async def create_sft_job(body: CreateSFTTrainingJob) -> dict[str, Any]:
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
        return submit(body.model_id, "sft", body)

    @app.get("/v1/preview/training-jobs/{job_id}", dependencies=dependencies)
    async def get_job(job_id: str) -> dict[str, Any]:
        job = state.get_job(job_id)
        if job is None:
            raise HTTPException(404, f"Training job {job_id} not found")
        return {"id": job.id, "model_id": job.model_id, "status": job.status}

    @app.get("/v1/preview/training-jobs/{job_id}/events", dependencies=dependencies)
    async def job_events(
        job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=100)
    ) -> dict[str, Any]:
        if state.get_job(job_id) is None:
            raise HTTPException(404, f"Training job {job_id} not found")
        return page(state.events(job_id), after, limit)

    @app.post("/v1/local/artifacts/{entity}/{project}/{name}", dependencies=dependencies)
    async def publish_dataset(
        entity: str, project: str, name: str, body: PublishDataset
    ) -> dict[str, Any]:
        for label, value in (("entity", entity), ("project", project), ("name", name)):
            if not is_valid_name(value):
                raise invalid(["path", label], f"use {NAME_RULE}")
        base = state.inside(state.artifacts_dir, entity, project, name)
        base.mkdir(parents=True, exist_ok=True)
        version = 1 + max(
            (int(p.name[1:]) for p in base.iterdir() if re.fullmatch(r"v\d+", p.name)), default=-1
        )
        target = base / f"v{version}"
        # encoded before anything is written: text that is not Unicode (a lone surrogate) is
        # a 400 (the app's UnicodeEncodeError handler) and leaves no half-written version
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in body.rows)
        data = lines.encode("utf-8")
        meta = json.dumps({"format": "jsonl", "rows": len(body.rows), **body.metadata}).encode()
        tmp = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=base))
        try:
            (tmp / body.filename).write_bytes(data)
            (tmp / "metadata.json").write_bytes(meta)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {
            "url": f"wandb-artifact:///{entity}/{project}/{name}:v{version}",
            "version": f"v{version}",
        }
