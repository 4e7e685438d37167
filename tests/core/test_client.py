"""The typed client against a scripted loopback server: wire shapes, retries, errors."""

from __future__ import annotations

import logging
import time

import pytest
from support.fault_server import FaultServer, Reply

from wandb_serverless.api import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    QuotaExceededError,
    RateLimitError,
    ServiceUnavailableError,
    TrainingJobFailedError,
    UnprocessableEntityError,
)
from wandb_serverless.rollouts import Trajectory, TrajectoryGroup

KEY = "wb-test-key-0123456789abcdef"
MODEL = {"id": "m-1", "entity": "me", "project": "p", "name": "agent", "base_model": "b"}


def make_client(server: FaultServer, **kw) -> Client:
    return Client(api_key=KEY, base_url=server.url, **kw)


def test_create_model_sends_bearer_key_and_spec_body(fault_server):
    fault_server.on("POST", "/preview/models", Reply(200, {**MODEL, "run_id": "agent"}))
    model = make_client(fault_server).models.create(
        project="p", name="agent", base_model="b", return_existing=True
    )
    assert model.id == "m-1" and model.run_id == "agent"
    (request,) = fault_server.calls("POST", "/preview/models")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body == {
        "project": "p",
        "name": "agent",
        "base_model": "b",
        "return_existing": True,
    }


def test_get_retries_after_429_honouring_retry_after(fault_server):
    page = {"object": "list", "data": [], "has_more": False}
    fault_server.on(
        "GET",
        "/preview/models/m-1/checkpoints",
        Reply(429, {"detail": "Concurrency limit reached"}, {"Retry-After": "0.3"}),
        Reply(200, page),
    )
    started = time.monotonic()
    result = make_client(fault_server).checkpoints.list("m-1")
    assert result.data == [] and not result.has_more
    assert len(fault_server.calls("GET", "/preview/models/m-1/checkpoints")) == 2
    assert time.monotonic() - started >= 0.3


def test_get_gives_up_after_max_retries(fault_server):
    fault_server.on("GET", "/health", Reply(503, {"detail": "The engine is currently overloaded"}))
    client = make_client(fault_server, max_retries=2)
    client._policy.initial_backoff_s = 0.01
    with pytest.raises(ServiceUnavailableError, match="overloaded"):
        client.health()
    assert len(fault_server.calls("GET", "/health")) == 3


def test_post_is_never_retried_once_sent(fault_server):
    fault_server.on(
        "POST", "/preview/training-jobs", Reply(503, {"detail": "busy"}), Reply(200, {"id": "j"})
    )
    group = TrajectoryGroup(
        trajectories=[Trajectory(messages_and_choices=[{"role": "user", "content": "hi"}])]
    )
    with pytest.raises(ServiceUnavailableError):
        make_client(fault_server).training_jobs.create(model_id="m-1", trajectory_groups=[group])
    assert len(fault_server.calls("POST", "/preview/training-jobs")) == 1


def test_non_retryable_statuses_map_to_their_errors(fault_server):
    fault_server.on("DELETE", "/preview/models/a", Reply(404, {"detail": "Model not found"}))
    fault_server.on("DELETE", "/preview/models/b", Reply(401, {"detail": "Authentication failed"}))
    fault_server.on(
        "DELETE", "/preview/models/c", Reply(402, {"detail": "You exceeded your current quota"})
    )
    fault_server.on(
        "POST", "/preview/models", Reply(409, {"detail": "Model 'agent' already exists"})
    )
    client = make_client(fault_server)
    with pytest.raises(NotFoundError, match="Model not found") as not_found:
        client.models.delete("a")
    assert not_found.value.status_code == 404
    with pytest.raises(AuthenticationError):
        client.models.delete("b")
    with pytest.raises(QuotaExceededError, match="quota"):
        client.models.delete("c")
    with pytest.raises(ConflictError, match="already exists"):
        client.models.create(project="p", name="agent", base_model="b")
    assert len(fault_server.requests) == 4  # none of them retried


def test_422_exposes_loc_and_msg(fault_server):
    detail = [{"loc": ["body", "steps"], "msg": "Field required", "type": "missing"}]
    fault_server.on("DELETE", "/preview/models/m-1/checkpoints", Reply(422, {"detail": detail}))
    with pytest.raises(UnprocessableEntityError, match=r"body\.steps: Field required") as err:
        make_client(fault_server).checkpoints.delete("m-1", [])
    assert err.value.errors[0]["loc"] == ["body", "steps"]


def test_rate_limit_error_carries_retry_after_when_out_of_retries(fault_server):
    fault_server.on(
        "GET", "/preview/base-models", Reply(429, {"detail": "slow down"}, {"Retry-After": "0"})
    )
    with pytest.raises(RateLimitError) as err:
        make_client(fault_server, max_retries=0).base_models.list()
    assert err.value.retry_after == 0.0


def test_slow_response_raises_timeout(fault_server):
    fault_server.on("GET", "/health", Reply(200, {"ok": True}, delay=1.0))
    with pytest.raises(APITimeoutError):
        make_client(fault_server, timeout=0.2, max_retries=0).health()


def test_connection_refused_raises_connection_error():
    client = Client(api_key=KEY, base_url="http://127.0.0.1:9/v1", max_retries=1)
    client._policy.initial_backoff_s = 0.01
    with pytest.raises(APIConnectionError, match="could not connect"):
        client.health()


def test_checkpoints_iterate_every_page_with_exclusive_after(fault_server):
    first = {
        "data": [{"id": "c1", "step": 1, "metrics": {}}, {"id": "c2", "step": 2, "metrics": {}}],
        "has_more": True,
    }
    second = {"data": [{"id": "c3", "step": 3, "metrics": {"val/reward": 0.5}}], "has_more": False}
    fault_server.on("GET", "/preview/models/m-1/checkpoints", Reply(200, first), Reply(200, second))
    steps = [c.step for c in make_client(fault_server).checkpoints.iter("m-1", page_size=2)]
    assert steps == [1, 2, 3]
    calls = fault_server.calls("GET", "/preview/models/m-1/checkpoints")
    assert "after" not in calls[0].query and calls[1].query["after"] == ["c2"]
    assert calls[0].query["limit"] == ["2"] and calls[0].query["order"] == ["asc"]


def test_delete_checkpoints_sends_steps_in_a_json_body(fault_server):
    fault_server.on(
        "DELETE",
        "/preview/models/m-1/checkpoints",
        Reply(200, {"deleted_count": 1, "not_found_steps": [9]}),
    )
    result = make_client(fault_server).checkpoints.delete("m-1", [1, 9])
    assert result.deleted_count == 1 and result.not_found_steps == [9]
    assert fault_server.calls("DELETE", "/preview/models/m-1/checkpoints")[0].body == {
        "steps": [1, 9]
    }


def _events(*items):
    return {"data": [{"id": f"e{i}", "type": t, "data": d} for i, t, d in items], "has_more": False}


def test_follow_yields_events_until_training_ended(fault_server):
    fault_server.on(
        "GET",
        "/preview/training-jobs/j/events",
        Reply(200, _events((1, "training_started", {"num_sequences": 2}))),
        Reply(200, _events((2, "gradient_step", {"loss": 0.5}), (3, "training_ended", {}))),
    )
    events = list(make_client(fault_server).training_jobs.events.follow("j", poll_interval=0.01))
    assert [e.type for e in events] == ["training_started", "gradient_step", "training_ended"]
    calls = fault_server.calls("GET", "/preview/training-jobs/j/events")
    assert calls[1].query["after"] == ["e1"]


def test_a_jobs_metrics_are_averaged_over_its_steps_and_say_how_many(fault_server):
    """An 8-row SFT job of two gradient steps reported ``"step": 1.5`` (the mean of the
    steps' own counters): the result says 2 gradient steps, and no step counter."""
    from wandb_serverless.training import follow_job

    steps = [(i + 2, "gradient_step", {"loss": 1.0 / (i + 1), "step": i + 1.0}) for i in range(2)]
    fault_server.on(
        "GET",
        "/preview/training-jobs/j/events",
        Reply(200, _events((1, "training_started", {"num_sequences": 2}), *steps,
                           (4, "training_ended", {}))),
    )  # fmt: skip
    metrics = follow_job(make_client(fault_server), "j", progress=False)
    assert metrics["loss"] == 0.75 and metrics["num_gradient_steps"] == 2 and "step" not in metrics


def test_follow_raises_with_the_servers_message_on_training_failed(fault_server):
    fault_server.on(
        "GET",
        "/preview/training-jobs/j/events",
        Reply(
            200,
            _events(
                (1, "training_started", {"num_sequences": 1}),
                (
                    2,
                    "training_failed",
                    {"error_message": "row 3: last message must be from the assistant"},
                ),
            ),
        ),
    )
    with pytest.raises(TrainingJobFailedError, match="row 3: last message"):
        list(make_client(fault_server).training_jobs.events.follow("j", poll_interval=0.01))


async def test_async_client_pages_and_follows(fault_server):
    fault_server.on(
        "GET",
        "/preview/training-jobs/j/events",
        Reply(
            200, _events((1, "training_started", {"num_sequences": 1}), (2, "training_ended", {}))
        ),
    )
    fault_server.on("POST", "/preview/models", Reply(200, MODEL))
    async with AsyncClient(api_key=KEY, base_url=fault_server.url) as client:
        model = await client.models.create(project="p", name="agent", base_model="b")
        events = [e.type async for e in client.training_jobs.events.follow("j", poll_interval=0.01)]
    assert model.name == "agent"
    assert events == ["training_started", "training_ended"]


def test_the_key_never_appears_in_reprs_logs_or_errors(fault_server, caplog):
    fault_server.on("GET", "/health", Reply(401, {"detail": f"bad key {KEY}"}))
    client = make_client(fault_server)
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthenticationError) as err:
        client.health()
    for text in (
        repr(client),
        str(client.settings),
        repr(client.settings),
        str(err.value),
        repr(err.value),
        caplog.text,
        str(err.value.detail),
    ):
        assert KEY not in text
    assert "***" in str(err.value)


def test_openai_client_ignores_ambient_openai_variables(fault_server, monkeypatch):
    monkeypatch.setenv("OPENAI_ORG_ID", "org-leak")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-leak")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "X-Leak: yes")
    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    fault_server.on("POST", "/chat/completions", Reply(200, completion))
    client = Client(api_key=KEY, base_url=fault_server.url, project="me/agents")
    reply = client.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "hi"
    (request,) = fault_server.calls("POST", "/chat/completions")
    assert request.headers["openai-project"] == "me/agents"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert "openai-organization" not in request.headers and "x-leak" not in request.headers
