"""Where requests go and with which credentials: the one place that resolves them.

Precedence for every setting: explicit argument, then environment, then default.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, SecretStr

DEFAULT_TRAINING_BASE_URL = "https://api.training.wandb.ai/v1"
DEFAULT_INFERENCE_BASE_URL = "https://api.inference.wandb.ai/v1"

ENV_API_KEY = "WANDB_API_KEY"
ENV_ENTITY = "WANDB_ENTITY"
ENV_PROJECT = "WANDB_PROJECT"
#: Points every endpoint (training and inference) at one server, e.g. a local backend.
ENV_BASE_URL = "WANDB_SERVERLESS_BASE_URL"
ENV_TRAINING_BASE_URL = "WANDB_TRAINING_BASE_URL"
ENV_INFERENCE_BASE_URL = "WANDB_INFERENCE_BASE_URL"


class MissingAPIKeyError(ValueError):
    """Raised when no API key was given and WANDB_API_KEY is unset."""

    def __init__(self) -> None:
        super().__init__(
            f"No W&B API key: pass api_key=... or set {ENV_API_KEY} "
            "(get one at https://wandb.ai/authorize)."
        )


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


class Settings(BaseModel):
    """Resolved connection settings. The key is a SecretStr: it never shows in reprs or logs."""

    model_config = ConfigDict(frozen=True)

    api_key: SecretStr | None = None
    entity: str | None = None
    project: str | None = None
    training_base_url: str = DEFAULT_TRAINING_BASE_URL
    inference_base_url: str = DEFAULT_INFERENCE_BASE_URL

    @classmethod
    def resolve(
        cls,
        *,
        api_key: str | SecretStr | None = None,
        entity: str | None = None,
        project: str | None = None,
        base_url: str | None = None,
        training_base_url: str | None = None,
        inference_base_url: str | None = None,
    ) -> Settings:
        """Build settings from arguments, falling back to the environment, then defaults.

        ``base_url`` sets both endpoints at once (a local backend serves both).
        ``project`` may be ``"entity/project"``; the entity part then fills ``entity``.
        """
        key = api_key if api_key is not None else _env(ENV_API_KEY)
        if isinstance(key, str):
            key = SecretStr(key) if key else None
        project = project or _env(ENV_PROJECT)
        entity = entity or _env(ENV_ENTITY)
        if project and "/" in project:
            head, _, tail = project.partition("/")
            entity, project = entity or head, tail
        shared = base_url or _env(ENV_BASE_URL)
        training = training_base_url or shared or _env(ENV_TRAINING_BASE_URL)
        inference = inference_base_url or shared or _env(ENV_INFERENCE_BASE_URL)
        return cls(
            api_key=key,
            entity=entity,
            project=project,
            training_base_url=_strip(training or DEFAULT_TRAINING_BASE_URL),
            inference_base_url=_strip(inference or DEFAULT_INFERENCE_BASE_URL),
        )

    def require_api_key(self) -> str:
        """The key's value, for building auth headers only."""
        if self.api_key is None or not self.api_key.get_secret_value():
            raise MissingAPIKeyError()
        return self.api_key.get_secret_value()

    @property
    def openai_project(self) -> str | None:
        """The ``OpenAI-Project`` header W&B Inference reads: ``entity/project``."""
        if not self.project:
            return None
        return f"{self.entity}/{self.project}" if self.entity else self.project


def _strip(url: str) -> str:
    return url.rstrip("/")
