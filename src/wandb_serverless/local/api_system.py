"""Health and discovery, without a key: ``/v1/health``, W&B's ``/v1/system-check`` and
``/v1/preview/base-models``, and vLLM's probes ``/health`` and ``/version`` (what load balancers
and vLLM clients ask)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from wandb_serverless.api.client import LOCAL_BACKEND
from wandb_serverless.local.backend import Backend, backend_of
from wandb_serverless.version import __version__

router = APIRouter()


@router.get("/v1/health")
async def health(backend: Backend = Depends(backend_of)) -> dict[str, Any]:
    return {"status": "ok", "model": backend.model_id, "engine": backend.engine.load}


@router.get("/v1/system-check")
async def system_check(backend: Backend = Depends(backend_of)) -> JSONResponse:
    engine_ok = backend.engine.alive()
    database_ok = backend.state.healthy()
    body = {
        "api": True,
        "backend": LOCAL_BACKEND,  # how clients tell this server from W&B's
        "database": database_ok,
        "cpu_queue": {"success": engine_ok, "duration": 0.0, **backend.engine.load},
        "gpu_queue": {"success": True, "duration": 0.0, "available": False},
    }
    return JSONResponse(body, status_code=200 if engine_ok and database_ok else 503)


@router.get("/v1/preview/base-models")
async def base_models(backend: Backend = Depends(backend_of)) -> list[str]:
    return [backend.model_id]


@router.get("/health")
async def vllm_health(backend: Backend = Depends(backend_of)) -> Response:
    """vLLM's probe: 200 with no body while the engine runs, 503 when it has died."""
    return Response(status_code=200 if backend.engine.alive() else 503)


@router.get("/version")
async def version() -> dict[str, str]:
    """vLLM's ``/version``: this server's version (``wandb-serverless``'s, not vLLM's)."""
    return {"version": __version__}
