"""Concurrency: a bounded queue that sheds load with 429, and clients that leave stop their work."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from support.fixtures import MODEL_CACHE

from wandb_serverless.local import LocalBackend
from wandb_serverless.local.engine import wait_idle


@pytest.mark.slow
async def test_200_concurrent_requests_get_200_or_429_and_the_server_stays_up(tmp_path):
    with LocalBackend.start(
        data_dir=tmp_path, model_cache_dir=MODEL_CACHE, max_queue=64
    ) as backend:
        headers = {"Authorization": f"Bearer {backend.api_key}"}
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            base_url=backend.base_url, headers=headers, limits=limits, timeout=120
        ) as client:
            started = time.monotonic()
            responses = await asyncio.gather(
                *(client.post("/chat/completions", json=body) for _ in range(200))
            )
            elapsed = time.monotonic() - started
            statuses = [r.status_code for r in responses]
            assert set(statuses) <= {200, 429}, set(statuses)
            assert statuses.count(200) >= 64 and statuses.count(429) > 0
            assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 429)
            assert elapsed < 100
            after = await client.post("/chat/completions", json=body)
            assert after.status_code == 200


def test_a_client_that_disconnects_stops_its_generation(backend):
    engine = backend.app.state.backend.engine
    body = {
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 2000,
        "stream": True,
        "extra_body": None,
    }
    headers = {"Authorization": f"Bearer {backend.api_key}"}
    steps_before = engine.steps
    with httpx.stream(
        "POST", backend.base_url + "/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in received)
    assert wait_idle(engine, timeout=10), "generation kept running after the client left"
    assert engine.steps - steps_before < 200
