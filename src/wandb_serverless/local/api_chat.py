"""The inference API: ``POST /v1/chat/completions`` and ``GET /v1/models`` (OpenAI's)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from wandb_serverless.local.backend import Backend, backend_of, require_key
from wandb_serverless.local.protocol import ChatCompletionRequest
from wandb_serverless.local.serving import serve_chat

router = APIRouter(dependencies=[Depends(require_key)])


async def chat_completions(
    body: ChatCompletionRequest, request: Request, backend: Backend = Depends(backend_of)
) -> Any:
    return await serve_chat(backend, body, request)


router.post("/v1/chat/completions")(chat_completions)
router.post("/v1/chat/completions/", include_in_schema=False)(chat_completions)


@router.get("/v1/models")
async def list_models(backend: Backend = Depends(backend_of)) -> dict[str, Any]:
    created = int(backend.started)
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "wandb-serverless",
            "root": backend.model_id,
            "max_model_len": backend.engine.context_length,
        }
        for name in backend.served_models()
    ]
    serving = {str(alias): str(step) for alias, step in backend.served_aliases()}
    for card in data:  # a named alias names the checkpoint it serves now, as vLLM's LoRA cards
        if card["id"] in serving:
            card.update(root=serving[card["id"]], parent=backend.model_id)
    return {"object": "list", "data": data}
