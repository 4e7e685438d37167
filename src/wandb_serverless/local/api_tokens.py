"""vLLM's ``POST /tokenize`` and ``POST /detokenize``: count and see tokens with the served
model's own tokenizer (what ``ChatWandb.get_num_tokens`` uses). Same bodies and answers as vLLM's
server; unlike vLLM's, they need the bearer key like every other route here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wandb_serverless.local.backend import Backend, backend_of, require_key
from wandb_serverless.local.protocol import BadRequest, ChatCompletionRequest, render_prompt

MAX_TEXT_CHARS = 4_000_000  # the body limit bounds it anyway; a count needs no more


class TokenizeRequest(BaseModel):
    """Either ``prompt`` (text) or ``messages`` (rendered with the chat template, tools inlined,
    exactly as a chat completion's prompt, so the count is its ``usage.prompt_tokens``)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    messages: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    tools: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int] = Field(max_length=1_000_000)


router = APIRouter(dependencies=[Depends(require_key)])


def _ids(tokenizer: Any, body: TokenizeRequest) -> list[int]:
    if body.prompt is not None:
        special = True if body.add_special_tokens is None else body.add_special_tokens
        return tokenizer(body.prompt, add_special_tokens=special).input_ids
    try:  # the chat request's own checks (roles...), as a 400 rather than a crash
        chat = ChatCompletionRequest(
            messages=body.messages,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            chat_template_kwargs=body.chat_template_kwargs,
        )
    except ValidationError as exc:
        problems = "; ".join(str(e.get("msg", "")) for e in exc.errors())
        raise BadRequest(f"invalid messages: {problems}") from None
    rendered = render_prompt(tokenizer, chat, body.tools or [])
    return tokenizer(rendered, add_special_tokens=bool(body.add_special_tokens)).input_ids


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, backend: Backend = Depends(backend_of)) -> dict[str, Any]:
    backend.resolve_model(body.model)  # an unknown model is a 404, as for chat
    tokenizer = backend.loaded.tokenizer
    ids = await backend.off_loop(_ids, tokenizer, body)
    return {
        "count": len(ids),
        "max_model_len": backend.engine.context_length,
        "tokens": ids,
        "token_strs": tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None,
    }


@router.post("/detokenize")
async def detokenize(
    body: DetokenizeRequest, backend: Backend = Depends(backend_of)
) -> dict[str, Any]:
    backend.resolve_model(body.model)
    tokenizer = backend.loaded.tokenizer
    size = min(backend.engine.vocab_size, len(tokenizer))
    bad = [t for t in body.tokens if not 0 <= t < size]
    if bad:
        raise BadRequest(f"token ids must be between 0 and {size - 1}; got {bad[0]}")
    return {"prompt": await backend.off_loop(tokenizer.decode, body.tokens)}
