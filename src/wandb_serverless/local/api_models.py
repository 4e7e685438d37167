"""W&B's ``/v1/preview`` models API, served locally: models, their checkpoints, and logging."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.exceptions import HTTPException

from wandb_serverless.api.types import DeleteCheckpointsRequest, LogRequest, ModelCreate
from wandb_serverless.local.artifacts import adapter_name, copy_checkpoint, delete_checkpoints
from wandb_serverless.local.backend import Backend, backend_of, require_key
from wandb_serverless.local.checks import invalid, log_metrics, require_finite
from wandb_serverless.local.state import ModelRow, page
from wandb_serverless.models import ALIAS_RULE, MAX_STEP, NAME_RULE, is_valid_alias, is_valid_name

router = APIRouter(dependencies=[Depends(require_key)])
PREVIEW = "/v1/preview/models"
LOCAL = "/v1/local/models"  # local extensions: W&B sets aliases with the wandb SDK


def model_or_404(backend: Backend, model_id: str) -> ModelRow:
    model = backend.state.get_model(model_id)
    if model is None:
        raise HTTPException(404, f"Model {model_id} not found")
    return model


@router.post(PREVIEW)
async def create_model(body: ModelCreate, backend: Backend = Depends(backend_of)) -> dict[str, Any]:
    state = backend.state
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


@router.get(PREVIEW)
async def list_models(backend: Backend = Depends(backend_of)) -> list[dict[str, Any]]:
    """Local extension (W&B's API has no list): the registered models, oldest first."""
    state = backend.state
    return [{**m.as_response(), "latest_step": state.latest_step(m.id)} for m in state.all_models()]


@router.delete(PREVIEW + "/{model_id}")
async def delete_model(model_id: str, backend: Backend = Depends(backend_of)) -> dict[str, Any]:
    model_or_404(backend, model_id)
    for checkpoint in backend.state.checkpoints(model_id):
        backend.engine.drop_adapter(adapter_name(checkpoint.id))
    count = backend.state.delete_model(model_id)
    delete_checkpoints(backend.state, model_id)
    return {"model_id": model_id, "deleted_checkpoints": count, "deleted_run": True}


@router.get(PREVIEW + "/{model_id}/checkpoints")
async def list_checkpoints(
    model_id: str,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "asc",
    backend: Backend = Depends(backend_of),
) -> dict[str, Any]:
    model_or_404(backend, model_id)
    state = backend.state
    items = [
        {"id": c.id, "step": c.step, "metrics": state.metrics(model_id, c.step)}
        for c in state.checkpoints(model_id, order)
    ]
    return page(items, after, limit)


@router.delete(PREVIEW + "/{model_id}/checkpoints")
async def delete_model_checkpoints(
    model_id: str,
    body: DeleteCheckpointsRequest = Body(...),
    backend: Backend = Depends(backend_of),
) -> dict[str, Any]:
    model_or_404(backend, model_id)
    served = {s: a for a, s in backend.state.aliases(model_id).items() if s in body.steps}
    if served:
        names = ", ".join(f"step {s} as :{a}" for s, a in sorted(served.items()))
        raise HTTPException(
            409, f"{names} is served; move or delete the alias first ({LOCAL}/{{id}}/aliases)"
        )
    deleted, missing = backend.state.delete_checkpoints(model_id, body.steps)
    for checkpoint in deleted:
        backend.engine.drop_adapter(adapter_name(checkpoint.id))
    delete_checkpoints(backend.state, model_id, [c.path for c in deleted])
    return {"deleted_count": len(deleted), "not_found_steps": missing}


@router.post(LOCAL + "/{model_id}/checkpoints/{step}/copy")
async def copy_model_checkpoint(
    model_id: str, step: int = Path(..., ge=1, le=MAX_STEP), backend: Backend = Depends(backend_of)
) -> dict[str, Any]:
    """Local extension: checkpoint ``step``'s adapter again as the newest checkpoint, so that the
    next training job continues from it (a learning loop going back to the checkpoint it serves
    after rejecting a newer one). Its optimizer state is not copied: the next job starts AdamW
    afresh. Refused (409) while a job of the model is queued or running."""
    model_or_404(backend, model_id)
    state = backend.state
    source = state.checkpoint(model_id, step)
    if source is None:
        steps = [c.step for c in state.checkpoints(model_id)]
        raise HTTPException(404, f"Model {model_id} has no checkpoint at step {step} ({steps=})")
    if state.unfinished_jobs(model_id):
        raise HTTPException(409, f"Model {model_id} has a training job queued or running")
    new = state.latest_step(model_id) + 1
    target = copy_checkpoint(state, model_id, FilePath(source.path), new)
    state.add_checkpoint(model_id, new, target)
    state.set_metrics(model_id, new, {"copied_from_step": float(step)})
    return {"model_id": model_id, "step": new, "copied_from_step": step}


@router.post(PREVIEW + "/{model_id}/log")
async def log(
    model_id: str, body: LogRequest, backend: Backend = Depends(backend_of)
) -> dict[str, Any]:
    model_or_404(backend, model_id)
    require_finite(body.trajectory_groups)
    state = backend.state
    state.set_metrics(model_id, state.latest_step(model_id), log_metrics(body))
    return {}


@router.get(LOCAL + "/{model_id}/aliases")
async def list_aliases(model_id: str, backend: Backend = Depends(backend_of)) -> dict[str, int]:
    """Local extension: the model's named aliases and the step each serves."""
    model_or_404(backend, model_id)
    return backend.state.aliases(model_id)


@router.put(LOCAL + "/{model_id}/aliases/{alias}")
async def set_alias(
    model_id: str,
    alias: str,
    step: int = Body(..., embed=True, ge=0, le=MAX_STEP),
    backend: Backend = Depends(backend_of),
) -> dict[str, Any]:
    """Local extension: serve ``:alias`` from checkpoint ``step`` (0: the base model), moving
    the alias if it was set on another step, as a W&B artifact alias moves."""
    model_or_404(backend, model_id)
    if not is_valid_alias(alias):
        raise invalid(["path", "alias"], f"use {ALIAS_RULE}")
    if step > 0 and backend.state.checkpoint(model_id, step) is None:
        steps = [c.step for c in backend.state.checkpoints(model_id)]
        raise HTTPException(404, f"Model {model_id} has no checkpoint at step {step} ({steps=})")
    backend.state.set_alias(model_id, alias, step)
    return {"model_id": model_id, "alias": alias, "step": step}


@router.delete(LOCAL + "/{model_id}/aliases/{alias}")
async def delete_alias(
    model_id: str, alias: str, backend: Backend = Depends(backend_of)
) -> dict[str, Any]:
    model_or_404(backend, model_id)
    if not backend.state.delete_alias(model_id, alias):
        raise HTTPException(404, f"Model {model_id} has no alias {alias!r}")
    return {"model_id": model_id, "alias": alias, "deleted": True}
