"""The local server's shared state (the model, its engine, training, settings) and the
dependencies every router uses: the backend itself and the bearer-key check."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import HTTPException

from wandb_serverless.local.artifacts import adapter_name
from wandb_serverless.local.engine_api import EngineClient
from wandb_serverless.local.loader import DEFAULT_ALIASES, LoadedModel
from wandb_serverless.local.protocol import ChatCompletionRequest, Plan, TokenText, plan
from wandb_serverless.local.state import State
from wandb_serverless.local.trainer import TrainingWorker
from wandb_serverless.models import CheckpointRef, is_checkpoint

T = TypeVar("T")
MODELS_SHOWN = 10  # in an unknown model's 404


@dataclass
class Backend:
    """Everything the routes need: the model, its engine, and what the server is configured with."""

    loaded: LoadedModel
    engine: EngineClient
    api_key: str
    state: State
    worker: TrainingWorker
    default_max_tokens: int = 512
    default_entity: str = "local"
    preprocess_timeout: float = 30.0
    aliases: tuple[str, ...] = ()  # more names the model answers to (--served-model-name)
    max_logprobs: int = 20  # the most top/prompt logprobs a request may ask (-1: any)
    token_text: TokenText = field(init=False)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.token_text = TokenText(self.loaded.tokenizer, self.engine.vocab_size)
        digest = hashlib.sha256(self.loaded.model_id.encode()).hexdigest()[:10]
        self.fingerprint = f"local-{digest}"

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    def trainable_base_models(self) -> set[str]:
        return {self.model_id, *DEFAULT_ALIASES, *self.aliases}

    def resolve_model(self, name: str | None) -> tuple[str, str] | None:
        """(adapter name, path) serving ``name``; None for the base model; unknown names 404.

        ``wandb-artifact:///e/p/name:stepN`` pins a step; ``:latest`` or no suffix is the newest
        checkpoint; ``:step0``, or a model with no checkpoint yet, is the base model; a named
        alias (``:production``) is the step it is set on (404 while it is set on none).
        """
        if name is None or name in (self.model_id, *DEFAULT_ALIASES, *self.aliases):
            return None
        if not is_checkpoint(name):
            raise self._unknown(name)
        try:
            ref = CheckpointRef.parse(name)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        model = self.state.find_model(ref.entity, ref.project, ref.name)
        if model is None:
            raise self._unknown(name)
        step = ref.step
        if ref.named_alias is not None:
            step = self.state.aliases(model.id).get(ref.named_alias)
            if step is None:
                raise HTTPException(
                    404,
                    f"The model `{name}` has no checkpoint with alias '{ref.named_alias}' "
                    "(set one with TrainableModel.promote).",
                )
        if step == 0:
            return None
        checkpoint = self.state.checkpoint(model.id, step)
        if checkpoint is None:
            if step is None:
                return None
            raise HTTPException(404, f"The model `{name}` has no checkpoint at step {step}.")
        return adapter_name(checkpoint.id), checkpoint.path

    def _unknown(self, name: str) -> HTTPException:
        served = [*DEFAULT_ALIASES, *self.served_models()]
        shown = ", ".join(served[:MODELS_SHOWN])
        more = f" and {len(served) - MODELS_SHOWN} more" if len(served) > MODELS_SHOWN else ""
        return HTTPException(
            404, f"The model `{name}` does not exist. This server serves: {shown}{more}."
        )

    def prepare(self, body: ChatCompletionRequest) -> tuple[Plan, Any]:
        """The engine plan and its output constraint compiled by the engine (CPU work: run it
        through ``off_loop``)."""
        run = plan(
            body,
            self.loaded.tokenizer,
            context_length=self.engine.context_length,
            default_max_tokens=self.default_max_tokens,
            vocab_size=self.engine.vocab_size,
            max_logprobs=self.max_logprobs,
        )
        compiled = None
        if run.constraint is not None:
            compiled = self.engine.compile_constraint(run.constraint)
        return run, compiled

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Rendering, tokenizing and compiling a grammar are CPU work: off the event loop, so
        health and every other request stay responsive, and bounded in time (a 400 after it)."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), self.preprocess_timeout)
        except TimeoutError:
            raise HTTPException(
                400, f"the request took over {self.preprocess_timeout:.0f} s to prepare"
            ) from None

    def served_models(self) -> list[str]:
        checkpoints = [
            str(CheckpointRef.of(m.entity, m.project, m.name, step))
            for m, step in self.state.all_checkpoints()
        ]
        named = [str(ref) for ref, _ in self.served_aliases()]
        return [self.model_id, *self.aliases, *checkpoints, *named]

    def served_aliases(self) -> list[tuple[CheckpointRef, CheckpointRef]]:
        """Each named alias's reference and the ``:stepN`` reference it serves now."""
        return [
            (CheckpointRef.of(m.entity, m.project, m.name).named(alias),
             CheckpointRef.of(m.entity, m.project, m.name, step))
            for m, alias, step in self.state.all_aliases()
        ]  # fmt: skip


def backend_of(request: Request) -> Backend:
    """The app's Backend (a FastAPI dependency)."""
    return request.app.state.backend


def require_key(request: Request) -> None:
    """The bearer key, compared in constant time; a 401 in W&B's shape otherwise."""
    backend = backend_of(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), backend.api_key):
        raise HTTPException(401, "Authentication failed", headers={"WWW-Authenticate": "Bearer"})
