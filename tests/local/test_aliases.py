"""Named aliases on the local backend (``:production``): served like ``:latest``, moved by a
PUT, listed by /v1/models with the step they serve, and bad input answered with a 4xx."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest
from support.fixtures import sampled_rollouts

from wandb_serverless import TrainableModel
from wandb_serverless.rollouts import RolloutStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(backend, oai, tmp_path_factory) -> TrainableModel:
    """A model with two checkpoints."""
    tmp = tmp_path_factory.mktemp("aliases")
    store = RolloutStore(tmp / "r.db")
    sampled_rollouts(oai, 4, store=store)
    tm = TrainableModel(f"aliased-{uuid.uuid4().hex[:6]}", "aliases", backend.model_id,
                        client=backend.client(), history_dir=tmp, progress=False)  # fmt: skip
    for _ in range(2):
        tm.train_rl(store.groups(), {"learning_rate": 1e-5})
    return tm


def http(backend, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {backend.api_key}"}
    return httpx.request(method, backend.base_url + path, headers=headers, **kwargs)


def test_an_alias_serves_the_step_it_is_set_on_and_moves(backend, oai, trained):
    ref = trained.ref_for("production")
    with pytest.raises(openai.NotFoundError, match="no checkpoint with alias 'production'"):
        oai.chat.completions.create(model=ref, messages=[{"role": "user", "content": "hi"}])
    assert trained.promote(1) == ref and trained.served_step() == 1
    cards = {m.id: m for m in oai.models.list()}
    assert cards[ref].model_extra["root"] == trained.ref_at(1)  # vLLM's LoRA card: what it serves
    greedy = {
        "messages": [{"role": "user", "content": "Name a color."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    by_alias = oai.chat.completions.create(model=ref, **greedy)
    assert by_alias.model == ref
    assert (
        by_alias.choices[0].message.content
        == oai.chat.completions.create(model=trained.ref_at(1), **greedy).choices[0].message.content
    )
    trained.promote(2)
    assert {m.id: m for m in oai.models.list()}[ref].model_extra["root"] == trained.ref_at(2)
    trained.promote(0)  # the base model
    assert trained.served_step() == 0
    assert oai.chat.completions.create(model=ref, **greedy).choices[0].message.content == (
        oai.chat.completions.create(model="default", **greedy).choices[0].message.content
    )


def test_a_served_checkpoint_cannot_be_deleted_until_its_alias_moves(backend, trained):
    trained.promote(2, alias="staging")
    path = f"/preview/models/{trained.id}/checkpoints"
    refused = http(backend, "DELETE", path, json={"steps": [2]})
    assert refused.status_code == 409 and "step 2 as :staging" in refused.json()["detail"]
    assert trained.checkpoint_steps() == [1, 2]
    assert http(backend, "DELETE", f"/local/models/{trained.id}/aliases/staging").status_code == 200
    assert http(backend, "DELETE", f"/local/models/{trained.id}/aliases/staging").status_code == 404


@pytest.mark.parametrize(
    ("alias", "body", "status"),
    [
        ("step3", {"step": 1}, 422),  # a step is not an alias
        ("v1", {"step": 1}, 422),  # nor is an artifact version
        ("latest", {"step": 1}, 422),
        ("ok", {"step": 99}, 404),  # no such checkpoint
        ("ok", {"step": -1}, 422),
        ("ok", {"step": 2**70}, 422),
        ("ok", {"step": "one"}, 422),
        ("ok", {}, 422),
    ],
)
def test_bad_aliases_and_steps_are_4xx(backend, trained, alias, body, status):
    response = http(backend, "PUT", f"/local/models/{trained.id}/aliases/{alias}", json=body)
    assert response.status_code == status, response.text


def test_aliases_of_an_unknown_model_are_404_and_need_the_key(backend):
    assert http(backend, "GET", "/local/models/nope/aliases").status_code == 404
    assert httpx.get(backend.base_url + "/local/models/nope/aliases").status_code == 401


def test_a_checkpoint_copied_as_the_newest_serves_its_weights(backend, oai, trained):
    """``TrainableModel.restore`` (the loop's ``after_rejection="restore"``): a copy of an
    earlier checkpoint becomes the newest, the one the next job trains on."""
    greedy = {"messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 8,
              "temperature": 0, "logprobs": True}  # fmt: skip
    copy = trained.restore(1)
    assert copy == trained.latest_step() == max(trained.checkpoint_steps())
    at = {s: oai.chat.completions.create(model=trained.ref_at(s), **greedy) for s in (1, copy)}
    assert at[copy].choices[0].message.content == at[1].choices[0].message.content
    assert [t.logprob for t in at[copy].choices[0].logprobs.content] == [
        t.logprob for t in at[1].choices[0].logprobs.content
    ]
    steps = trained.checkpoint_steps()
    path = f"/local/models/{trained.id}/checkpoints"
    assert http(backend, "POST", f"{path}/99/copy").status_code == 404
    assert http(backend, "POST", f"{path}/0/copy").status_code == 422  # the base model: no copy
    assert http(backend, "POST", f"{path}/one/copy").status_code == 422
    assert http(backend, "POST", "/local/models/nope/checkpoints/1/copy").status_code == 404
    assert httpx.post(f"{backend.base_url}{path}/1/copy").status_code == 401
    assert trained.checkpoint_steps() == steps  # nothing copied by a refused request


def test_no_checkpoint_is_copied_while_a_job_of_the_model_runs(backend, oai, tmp_path):
    store = RolloutStore(tmp_path / "r.db")
    sampled_rollouts(oai, 4, store=store)
    tm = TrainableModel(f"busy-{uuid.uuid4().hex[:6]}", "aliases", backend.model_id,
                        client=backend.client(), history_dir=tmp_path, progress=False)  # fmt: skip
    tm.train_rl(store.groups(), {"learning_rate": 1e-5})
    job = tm.submit_rl(store.groups(), {"learning_rate": 1e-5})
    refused = http(backend, "POST", f"/local/models/{tm.id}/checkpoints/1/copy")
    assert refused.status_code == 409 and "queued or running" in refused.text
    tm.wait(job)
    assert tm.restore(1) == 3 and tm.checkpoint_steps() == [1, 2, 3]
