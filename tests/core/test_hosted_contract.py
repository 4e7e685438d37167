"""What the client sends on the hosted path, pinned against a recording loopback server that
stands in for W&B (``WANDB_SERVERLESS_LOCAL=0``: a loopback address is otherwise taken for a
local backend)."""

from __future__ import annotations

import base64
import sys
import types

import httpx
import pytest
from llama_index.core.llms import ChatMessage
from llama_index.llms.wandb import WandbLLM
from pydantic import SecretStr
from support.fault_server import Reply

from langchain_wandb import ChatWandb
from wandb_serverless import TrainableModel, config
from wandb_serverless.api import APITimeoutError, Client, InternalServerError
from wandb_serverless.api.errors import error_for_response
from wandb_serverless.config import DEFAULT_TRAINING_BASE_URL, MissingEntityError, Settings
from wandb_serverless.rollouts import Trajectory, TrajectoryGroup

KEY = "wb-hosted-key-0123456789abcdef"
MODEL = {"id": "m-1", "entity": "team", "project": "p", "name": "agent", "base_model": "b"}
COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}
    ],
}


@pytest.fixture
def hosted(monkeypatch, fault_server):
    """The fault server as "W&B": no entity configured, the key's default entity is 'team'."""
    monkeypatch.setenv("WANDB_SERVERLESS_LOCAL", "0")
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    lookups = []

    class Api:  # the wandb SDK's public API, faked: nothing here reaches W&B
        def __init__(self, api_key: str) -> None:
            lookups.append(api_key)
            self.default_entity = "team"

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Api))
    monkeypatch.setattr(config, "_DEFAULT_ENTITIES", {})
    fault_server.on("POST", "/chat/completions", Reply(200, COMPLETION))
    fault_server.lookups = lookups
    return fault_server


def test_a_bare_project_is_sent_as_the_keys_entity_slash_project(hosted):
    llm = ChatWandb(model="m", base_url=hosted.url, project="myproj")
    llm.invoke("hi")
    llm.invoke("again")
    WandbLLM(model="m", base_url=hosted.url, project="myproj").chat([ChatMessage(content="x")])
    headers = [r.headers.get("openai-project") for r in hosted.calls("POST", "/chat/completions")]
    assert headers == ["team/myproj"] * 3
    assert hosted.lookups == [KEY]  # asked once per key


def test_wandb_entity_wins_and_needs_no_lookup(hosted, monkeypatch):
    monkeypatch.setenv("WANDB_ENTITY", "ent")
    ChatWandb(model="m", base_url=hosted.url, project="myproj").invoke("hi")
    (call,) = hosted.calls("POST", "/chat/completions")
    assert call.headers["openai-project"] == "ent/myproj" and hosted.lookups == []


def test_no_entity_to_be_found_is_a_clear_error_before_anything_is_sent(hosted, monkeypatch):
    class Failing:
        def __init__(self, api_key: str) -> None:
            raise PermissionError(f"401 for key {api_key}")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Failing))
    with pytest.raises(MissingEntityError, match="team/myproj") as raised:
        ChatWandb(model="m", base_url=hosted.url, project="myproj").invoke("hi")
    assert KEY not in str(raised.value) and "WANDB_ENTITY" in str(raised.value)
    assert hosted.requests == []


def test_without_the_wandb_sdk_the_error_names_the_extra_to_install(hosted, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(MissingEntityError, match=r"pip install 'wandb-serverless\[wandb\]'"):
        ChatWandb(model="m", base_url=hosted.url, project="myproj").invoke("hi")
    assert hosted.requests == []


def test_a_local_backend_takes_the_bare_project(monkeypatch):
    monkeypatch.delenv("WANDB_SERVERLESS_LOCAL", raising=False)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    loopback = Settings.resolve(api_key=KEY, project="p", base_url="http://127.0.0.1:9/v1")
    assert loopback.openai_project == "p"
    assert Settings.resolve(api_key=KEY, project="p", local=True).openai_project == "p"


def test_model_registration_is_retried_on_524_and_a_job_is_never_sent_twice(hosted):
    hosted.on("POST", "/preview/models", Reply(524, {"detail": "timeout"}), Reply(200, MODEL))
    hosted.on("POST", "/preview/training-jobs", Reply(524, {"detail": "timeout"}))
    client = Client(base_url=hosted.url, max_retries=2)
    client._policy.initial_backoff_s = 0.01
    model = client.models.create(project="p", name="agent", base_model="b", return_existing=True)
    assert model.id == "m-1" and len(hosted.calls("POST", "/preview/models")) == 2
    group = TrajectoryGroup(trajectories=[Trajectory(reward=1.0), Trajectory(reward=0.0)])
    with pytest.raises(InternalServerError, match="may still have done it"):
        client.training_jobs.create(model_id="m-1", trajectory_groups=[group])
    assert len(hosted.calls("POST", "/preview/training-jobs")) == 1


def test_registration_without_return_existing_is_not_retried(hosted):
    hosted.on("POST", "/preview/models", Reply(524, {"detail": "timeout"}), Reply(200, MODEL))
    with pytest.raises(InternalServerError):
        Client(base_url=hosted.url).models.create(project="p", name="agent", base_model="b")
    assert len(hosted.calls("POST", "/preview/models")) == 1


@pytest.mark.slow
def test_creating_waits_longer_than_the_other_calls(hosted):
    hosted.on("POST", "/preview/models", Reply(200, MODEL, delay=1.5))
    hosted.on("GET", "/preview/models/m-1/checkpoints", Reply(200, {"data": []}, delay=1.5))
    client = Client(base_url=hosted.url, timeout=1.0, max_retries=0)
    assert client.models.create(project="p", name="agent", base_model="b").id == "m-1"
    with pytest.raises(APITimeoutError):
        client.checkpoints.list("m-1")


class FakeRun:
    def __init__(self, **init) -> None:
        self.init, self.logged = init, []

    def log(self, metrics: dict, step: int) -> None:
        self.logged.append((step, metrics))

    def finish(self) -> None:
        self.finished = True


def test_trainable_model_sends_the_hosted_sequence(hosted, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_ENTITY", "team")
    runs: list[FakeRun] = []

    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    fake = types.SimpleNamespace(run=None, init=init, Settings=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    page = {"data": [], "has_more": False}
    step = {"data": [{"id": "c1", "step": 1, "metrics": {}}], "has_more": False}
    hosted.on("POST", "/preview/models", Reply(200, MODEL))
    hosted.on("GET", "/preview/models/m-1/checkpoints", Reply(200, page), Reply(200, step))
    hosted.on("POST", "/preview/training-jobs", Reply(200, {"id": "job-1"}))
    events = [
        {"id": "e1", "type": "training_started", "data": {}},
        {"id": "e2", "type": "something_new", "data": {"x": 1}},  # a newer server's event
        {"id": "e3", "type": "gradient_step", "data": {"loss": 0.5}},
        {"id": "e4", "type": "training_ended", "data": {"step": 1}},
    ]
    hosted.on(
        "GET",
        "/preview/training-jobs/job-1/events",
        Reply(200, {"data": events, "has_more": False}),
    )
    tm = TrainableModel(
        "agent", "p", "b", client=Client(base_url=hosted.url), progress=False, history_dir=tmp_path
    )
    assert tm.ref == "b"  # before the first checkpoint: the base model (W&B has no :latest)
    group = TrajectoryGroup(trajectories=[Trajectory(reward=1.0), Trajectory(reward=0.0)])
    result = tm.train_rl([group])
    assert result.step == 1 and result.metrics["loss"] == 0.5
    assert tm.ref == "wandb-artifact:///team/p/agent:latest"
    sent = [(r.method, r.path) for r in hosted.requests]
    assert sent[:4] == [
        ("POST", "/v1/preview/models"),
        ("GET", "/v1/preview/models/m-1/checkpoints"),
        ("POST", "/v1/preview/training-jobs"),
        ("GET", "/v1/preview/training-jobs/job-1/events"),
    ]
    register = hosted.requests[0]
    assert register.body == {
        "project": "p",
        "name": "agent",
        "base_model": "b",
        "entity": "team",
        "return_existing": True,
    }
    assert register.headers["authorization"] == f"Bearer {KEY}"
    job = hosted.calls("POST", "/preview/training-jobs")[0].body
    assert job["model_id"] == "m-1" and len(job["trajectory_groups"]) == 1
    assert "experimental_config" not in job  # nothing set: W&B's own defaults apply
    (run,) = runs  # metrics go to the model's W&B run, with the key passed, not ambient
    assert run.init["settings"] == {"api_key": KEY} and run.init["entity"] == "team"
    assert run.logged[0][0] == 1 and run.logged[0][1]["train/loss"] == 0.5


def test_hosted_or_local_comes_from_the_server_not_the_url(hosted, backend):
    hosted.on("GET", "/system-check", Reply(200, {"api": True}))
    assert not Client(base_url=hosted.url).is_local()  # loopback, and still W&B's stand-in
    unknown = Settings(  # neither said local nor hosted: the server's word decides
        api_key=SecretStr(backend.api_key),
        training_base_url=backend.base_url,
        inference_base_url=backend.base_url,
    )
    assert unknown.local is None and Client(settings=unknown).is_local()


def test_list_models_asks_the_inference_host(hosted, fault_server):
    hosted.on("GET", "/models", Reply(200, {"data": [{"id": "served", "object": "model"}]}))
    settings = Settings.resolve(
        api_key=KEY, training_base_url="http://127.0.0.1:9/v1", inference_base_url=hosted.url
    )
    assert [m.id for m in Client(settings=settings).list_models()] == ["served"]


def test_a_404_from_the_default_host_says_the_service_may_have_moved():
    request = httpx.Request("GET", DEFAULT_TRAINING_BASE_URL + "/preview/base-models")
    error = error_for_response(httpx.Response(404, json={"detail": "Not Found"}, request=request))
    assert "forge.coreweave.com" in str(error) and "WANDB_TRAINING_BASE_URL" in str(error)


def test_ref_asks_for_the_step_only_until_a_checkpoint_exists(hosted, monkeypatch, tmp_path):
    """An empty page with null ids (OpenAI's shape) is an empty page; ``ref`` stops asking once
    a checkpoint exists, and one training step reads the new step once."""
    monkeypatch.setenv("WANDB_ENTITY", "team")
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(run=FakeRun(), init=None))
    empty = {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    step = {"data": [{"id": "c1", "step": 1, "metrics": {}}], "has_more": False}
    hosted.on("POST", "/preview/models", Reply(200, MODEL))
    hosted.on("GET", "/preview/models/m-1/checkpoints", Reply(200, empty), Reply(200, empty))
    hosted.on("GET", "/preview/models/m-1/checkpoints", Reply(200, step))
    hosted.on("POST", "/preview/training-jobs", Reply(200, {"id": "job-1"}))
    ended = [{"id": "e1", "type": "training_ended", "data": {"step": 1}}]
    hosted.on(
        "GET", "/preview/training-jobs/job-1/events", Reply(200, {"data": ended, "has_more": False})
    )
    tm = TrainableModel(
        "agent", "p", "b", client=Client(base_url=hosted.url), progress=False, history_dir=tmp_path
    )
    assert tm.ref == tm.ref == "b"  # no checkpoint yet: asked each time
    reads = len(hosted.calls("GET", "/preview/models/m-1/checkpoints"))
    assert reads == 2
    group = TrajectoryGroup(trajectories=[Trajectory(reward=1.0), Trajectory(reward=0.0)])
    assert tm.train_rl([group]).step == 1
    assert tm.ref == tm.ref == "wandb-artifact:///team/p/agent:latest"
    assert len(hosted.calls("GET", "/preview/models/m-1/checkpoints")) == reads + 1


def test_the_default_entity_is_asked_through_the_real_wandb_sdk(fault_server, monkeypatch):
    """The wandb SDK itself (not a fake module), pointed at a loopback stand-in for W&B's
    GraphQL API with WANDB_BASE_URL: the key goes as W&B's basic auth, the viewer's entity
    becomes the project's."""
    monkeypatch.setattr(config, "_DEFAULT_ENTITIES", {})
    monkeypatch.setenv("WANDB_BASE_URL", fault_server.url)
    for name in ("WANDB_ENTITY", "WANDB_SERVERLESS_LOCAL", "WANDB_SERVERLESS_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    viewer = {"data": {"viewer": {"id": "u1", "entity": "team", "username": "me", "flags": "{}"}}}
    fault_server.on("POST", "/graphql", Reply(200, viewer))
    key = "k" * 40  # the SDK itself refuses keys shorter than W&B's
    settings = Settings.resolve(api_key=key, project="agents")
    assert settings.openai_project == "team/agents"
    asked = fault_server.calls("POST", "/graphql")
    assert asked and all(
        r.headers["authorization"] == "Basic " + base64.b64encode(f"api:{key}".encode()).decode()
        for r in asked
    )
    assert any("viewer" in r.body["query"] for r in asked)
