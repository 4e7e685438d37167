"""Checked by mypy in ``make lint`` (never run): what a type checker tells users of each client.

``Client`` and ``AsyncClient`` share their resources' code; these lines fail the type check if
the async side is typed as returning results instead of awaitables, or a signature drifts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import assert_type

import openai

from wandb_serverless.api import AsyncClient, Client
from wandb_serverless.api.client import openai_client
from wandb_serverless.api.types import (
    CheckpointResponse,
    ModelResponse,
    Page,
    TrainingJobEvent,
    TrainingJobResponse,
)
from wandb_serverless.config import Settings


def sync_client(client: Client) -> None:
    assert_type(client.models.create(project="p", name="n", base_model="b"), ModelResponse)
    assert_type(client.checkpoints.list("m", limit=1), Page[CheckpointResponse])
    assert_type(client.checkpoints.iter("m"), Iterator[CheckpointResponse])
    assert_type(client.training_jobs.retrieve("j"), TrainingJobResponse)
    assert_type(client.training_jobs.events.follow("j"), Iterator[TrainingJobEvent])
    assert_type(client.openai(), openai.OpenAI)


async def async_client(client: AsyncClient) -> None:
    created = await client.models.create(project="p", name="n", base_model="b")
    assert_type(created, ModelResponse)
    assert_type(await client.checkpoints.list("m", limit=1), Page[CheckpointResponse])
    assert_type(client.checkpoints.iter("m"), AsyncIterator[CheckpointResponse])
    assert_type(await client.training_jobs.retrieve("j"), TrainingJobResponse)
    assert_type(client.training_jobs.events.follow("j"), AsyncIterator[TrainingJobEvent])
    async for event in client.training_jobs.events.follow("j", poll_interval=0.5):
        assert_type(event, TrainingJobEvent)
    assert_type(client.openai(), openai.AsyncOpenAI)


def chat_clients(settings: Settings) -> None:
    assert_type(openai_client(settings), openai.OpenAI)
    assert_type(openai_client(settings, async_client=True), openai.AsyncOpenAI)
