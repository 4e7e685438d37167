"""Models, checkpoints and real LoRA training jobs through the typed client."""

from __future__ import annotations

import uuid

import openai
import pytest
import torch

from wandb_serverless.api import (
    ConflictError,
    NotFoundError,
    TrainingJobFailedError,
    UnprocessableEntityError,
)
from wandb_serverless.models import CheckpointRef
from wandb_serverless.rollouts import Trajectory, TrajectoryGroup

PROMPT = [{"role": "user", "content": "Name a color."}]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sampled_group(oai, rewards: list[float], seed: int = 0) -> TrajectoryGroup:
    """A group of real rollouts: Choices carrying logprobs and token ids from the server."""
    reply = oai.chat.completions.create(
        model="default",
        messages=PROMPT,
        n=len(rewards),
        max_tokens=12,
        temperature=1.0,
        seed=seed,
        logprobs=True,
        extra_body={"return_token_ids": True},
    )
    trajectories = []
    for choice, reward in zip(reply.choices, rewards, strict=True):
        data = choice.model_dump(mode="json")
        data["prompt_token_ids"] = reply.model_extra["prompt_token_ids"]
        trajectories.append(Trajectory(messages_and_choices=[*PROMPT, data], reward=reward))
    return TrajectoryGroup(trajectories=trajectories)


def follow(client, job_id: str) -> list:
    return list(client.training_jobs.events.follow(job_id, poll_interval=0.1, timeout=300))


def test_rl_lifecycle_create_train_serve_delete(backend, oai):
    client = backend.client()
    name = unique("lifecycle")
    model = client.models.create(
        project="agents", name=name, base_model="default", return_existing=True
    )
    assert (model.entity, model.name, model.base_model) == ("local", name, backend.model_id)
    assert (
        client.models.create(
            project="agents", name=name, base_model="default", return_existing=True
        ).id
        == model.id
    )
    with pytest.raises(ConflictError):
        client.models.create(project="agents", name=name, base_model="default")
    ref = CheckpointRef.of("local", "agents", name)
    assert oai.chat.completions.create(
        model=str(ref.at(0)), messages=PROMPT, max_tokens=4
    ).choices  # step0 = base

    groups = [
        sampled_group(oai, [1.0, 0.0, 0.5, 0.0], seed=1),
        sampled_group(oai, [0.2, 0.2, 0.2, 0.2], seed=2),
    ]
    job = client.training_jobs.create(model_id=model.id, trajectory_groups=groups)
    events = follow(client, job.id)
    assert [e.type for e in events] == ["training_started", "gradient_step", "training_ended"]
    step = events[1].data
    assert all(isinstance(v, int | float) for v in step.values())
    assert step["num_groups_submitted"] == 2 and step["num_groups_trainable"] == 1
    assert step["num_trajectories"] == 8 and step["num_trainable_tokens"] > 0
    assert abs(step["mean_importance_ratio"] - 1.0) < 0.05  # recorded logprobs match the learner

    (checkpoint,) = client.checkpoints.iter(model.id)
    assert checkpoint.step == 1
    for served in (str(ref.at(1)), str(ref), f"wandb-artifact://local/agents/{name}"):
        reply = oai.chat.completions.create(model=served, messages=PROMPT, max_tokens=6)
        assert reply.model == served and reply.choices[0].message.content is not None
    assert str(ref.at(1)) in [m.id for m in oai.models.list()]

    client.models.log(model.id, split="val", trajectory_groups=groups)
    (checkpoint,) = client.checkpoints.list(model.id).data
    assert checkpoint.metrics["val/reward"] == pytest.approx((1.0 + 0.5 + 4 * 0.2) / 8)

    deleted = client.checkpoints.delete(model.id, [1, 7])
    assert deleted.deleted_count == 1 and deleted.not_found_steps == [7]
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model=str(ref.at(1)), messages=PROMPT, max_tokens=2)
    assert client.models.delete(model.id).model_id == model.id
    with pytest.raises(NotFoundError):
        client.checkpoints.list(model.id)


def test_checkpoint_pagination_orders_and_pages(backend):
    client = backend.client()
    model = client.models.create(
        project="agents", name=unique("pages"), base_model=backend.model_id
    )
    url = client.local_artifacts.publish(
        [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            }
        ],
        entity="local",
        project="agents",
        name=unique("tiny"),
    )["url"]
    for _ in range(3):
        job = client.training_jobs.create_sft(
            model_id=model.id, training_data_url=url, config={"batch_size": 1}
        )
        follow(client, job.id)
    steps = [c.step for c in client.checkpoints.iter(model.id, page_size=2)]
    assert steps == [1, 2, 3]
    newest = client.checkpoints.list(model.id, limit=1, order="desc")
    assert newest.data[0].step == 3 and newest.has_more
    second = client.checkpoints.list(model.id, limit=1, order="desc", after=newest.data[0].id)
    assert second.data[0].step == 2


def sequence_logprob(
    backend, adapter_path: str | None, prompt_ids: list[int], completion: list[int]
) -> float:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        backend.app.state.backend.loaded.path, dtype=torch.float32
    )
    model = PeftModel.from_pretrained(base, adapter_path) if adapter_path else base
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
    return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None]).sum())


def test_rl_raises_the_probability_of_the_rewarded_answer(backend, oai):
    client = backend.client()
    model = client.models.create(project="agents", name=unique("rl"), base_model=backend.model_id)
    group = sampled_group(oai, [1.0, 0.0, 0.0, 0.0], seed=5)
    best = group.trajectories[0].messages_and_choices[-1]
    prompt_ids, completion = best.model_extra["prompt_token_ids"], best.model_extra["token_ids"]
    before = sequence_logprob(backend, None, prompt_ids, completion)
    job = client.training_jobs.create(
        model_id=model.id, trajectory_groups=[group], experimental_config={"learning_rate": 1e-3}
    )
    follow(client, job.id)
    path = backend.app.state.backend.state.checkpoint(model.id, 1).path
    after = sequence_logprob(backend, path, prompt_ids, completion)
    assert after > before + 0.5, (before, after)


def test_sft_teaches_a_distinctive_answer_the_base_model_does_not_give(backend, oai):
    client = backend.client()
    model = client.models.create(project="agents", name=unique("sft"), base_model=backend.model_id)
    rows = [
        {
            "messages": [
                {"role": "user", "content": "What is your name?"},
                {"role": "assistant", "content": "My name is Zorblax the Magnificent."},
            ]
        }
    ]
    url = client.local_artifacts.publish(
        rows, entity="local", project="agents", name=unique("persona")
    )["url"]
    job = client.training_jobs.create_sft(
        model_id=model.id,
        training_data_url=url,
        config={"batch_size": 1, "learning_rate": 1e-3},
        experimental_config={"num_epochs": 24},
    )
    events = follow(client, job.id)
    assert len([e for e in events if e.type == "gradient_step"]) == 24
    # what a user reads: 1 row, 24 epochs, batches of 1, so 24 gradient steps to come
    assert events[0].data == {
        "num_sequences": 24, "num_rows": 1, "num_epochs": 24, "batch_size": 1
    }  # fmt: skip
    losses = [e.data["loss"] for e in events if e.type == "gradient_step"]
    assert losses[-1] < losses[0] / 4
    ask = [{"role": "user", "content": "What is your name?"}]
    trained = oai.chat.completions.create(
        model=f"wandb-artifact:///local/agents/{model.name}:latest",
        messages=ask,
        max_tokens=16,
        temperature=0,
    )
    base = oai.chat.completions.create(model="default", messages=ask, max_tokens=16, temperature=0)
    assert "Zorblax" in trained.choices[0].message.content
    assert "Zorblax" not in base.choices[0].message.content


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "ok"},
                    ]
                },
                {"messages": [{"role": "user", "content": "no answer"}]},
            ],
            "row 2: the last message must be from the assistant",
        ),
        ([{"messages": []}], "row 1: 'messages' must be a non-empty list"),
        (
            [
                {
                    "messages": [
                        {"role": "robot", "content": "x"},
                        {"role": "assistant", "content": "y"},
                    ]
                }
            ],
            "row 1: messages[0].role",
        ),
    ],
)
def test_bad_sft_rows_fail_the_job_naming_the_row(backend, rows, error):
    client = backend.client()
    model = client.models.create(
        project="agents", name=unique("badrows"), base_model=backend.model_id
    )
    url = client.local_artifacts.publish(
        rows, entity="local", project="agents", name=unique("bad")
    )["url"]
    job = client.training_jobs.create_sft(model_id=model.id, training_data_url=url)
    with pytest.raises(TrainingJobFailedError, match=error.replace("[", r"\[").replace("]", r"\]")):
        follow(client, job.id)
    assert list(client.checkpoints.iter(model.id)) == []


def test_bad_artifact_urls(backend):
    client = backend.client()
    model = client.models.create(project="agents", name=unique("urls"), base_model=backend.model_id)
    with pytest.raises(UnprocessableEntityError, match="wandb-artifact:///entity/project/name"):
        client.training_jobs.create_sft(
            model_id=model.id, training_data_url="wandb-artifact://nope"
        )
    job = client.training_jobs.create_sft(
        model_id=model.id, training_data_url="wandb-artifact:///local/agents/missing:v0"
    )
    with pytest.raises(TrainingJobFailedError, match="not found in the local artifact store"):
        follow(client, job.id)


def test_rl_without_logprobs_is_refused_unless_allowed(backend):
    client = backend.client()
    model = client.models.create(
        project="agents", name=unique("nologprobs"), base_model=backend.model_id
    )
    plain = [
        Trajectory(messages_and_choices=[*PROMPT, {"role": "assistant", "content": c}], reward=r)
        for c, r in (("Red.", 1.0), ("Blue.", 0.0))
    ]
    job = client.training_jobs.create(
        model_id=model.id, trajectory_groups=[TrajectoryGroup(trajectories=plain)]
    )
    with pytest.raises(TrainingJobFailedError, match="Choice objects with logprobs"):
        follow(client, job.id)
    job = client.training_jobs.create(
        model_id=model.id,
        trajectory_groups=[TrajectoryGroup(trajectories=plain)],
        experimental_config={"allow_training_without_logprobs": True},
    )
    assert follow(client, job.id)[-1].type == "training_ended"


def test_unknown_ids_are_404_and_bad_bodies_422(backend):
    client = backend.client()
    for call in (
        lambda: client.checkpoints.list("nope"),
        lambda: client.models.delete("nope"),
        lambda: client.training_jobs.retrieve("nope"),
        lambda: list(client.training_jobs.events.iter("nope")),
        lambda: client.training_jobs.create(
            model_id="nope", trajectory_groups=[TrajectoryGroup(trajectories=[Trajectory()])]
        ),
    ):
        with pytest.raises(NotFoundError):
            call()
    import httpx

    headers = {"Authorization": f"Bearer {backend.api_key}"}
    response = httpx.post(
        backend.base_url + "/preview/training-jobs", json={"trajectory_groups": []}, headers=headers
    )
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][0] == "body"
    response = httpx.post(
        backend.base_url + "/preview/models",
        json={"project": "p", "name": "x", "base_model": "meta-llama/Other"},
        headers=headers,
    )
    assert response.status_code == 400 and "trains" in response.json()["detail"]


def test_a_new_checkpoint_serves_after_the_only_loaded_one_was_deleted(backend, oai):
    client = backend.client()
    model = client.models.create(
        project="agents", name=unique("reload"), base_model=backend.model_id
    )
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ]
    url = client.local_artifacts.publish(
        rows, entity="local", project="agents", name=unique("tiny")
    )["url"]
    latest = f"wandb-artifact:///local/agents/{model.name}:latest"
    for _ in range(2):
        follow(client, client.training_jobs.create_sft(model_id=model.id, training_data_url=url).id)
        assert oai.chat.completions.create(model=latest, messages=PROMPT, max_tokens=3).choices
        client.checkpoints.delete(model.id, [1])
    assert oai.chat.completions.create(model="default", messages=PROMPT, max_tokens=3).choices
