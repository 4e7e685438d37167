"""Typed client for the W&B Serverless Training and Inference HTTP APIs."""

from wandb_serverless.api import errors, types
from wandb_serverless.api.client import AsyncClient, Client, openai_client
from wandb_serverless.api.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServiceUnavailableError,
    TrainingJobFailedError,
    UnprocessableEntityError,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "ServiceUnavailableError",
    "TrainingJobFailedError",
    "UnprocessableEntityError",
    "errors",
    "openai_client",
    "types",
]
