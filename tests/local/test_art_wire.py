"""Contract: what OpenPipe ART 0.5.23 sends (bodies captured from its ServerlessBackend, in
shared/reference/art-wire/) trains on the local backend unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wandb_serverless.api import Client
from wandb_serverless.local.trainer import Tokenization, rl_samples
from wandb_serverless.trajectory import TrajectoryGroup

WIRE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "art-wire"


def wire(name: str):
    path = WIRE / name
    if not path.exists():  # the reference lies beside the checkout (../shared)
        pytest.fail(f"{path} is missing: the ART wire samples are part of the shared reference")
    return json.loads(path.read_text())


def groups_of(name: str) -> list[dict]:
    data = wire(name)
    return list(data.values()) if isinstance(data, dict) else data


@pytest.fixture(scope="module")
def client(backend) -> Client:
    return backend.client()


def _events(client: Client, job_id: str) -> list:
    return list(client.training_jobs.events.follow(job_id, poll_interval=0.1, timeout=300))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["art_groups_wire.json", "art_groups_exchanges_wire.json", "art_metadata_variants_wire.json"],
)
def test_art_rl_bodies_train_a_checkpoint(client, backend, name):
    model = client.models.create(
        project="art-wire",
        name=name.removesuffix(".json").replace("_", "-"),
        base_model=backend.model_id,
        return_existing=True,
    )
    before = len(list(client.checkpoints.iter(model.id)))
    body = {
        "model_id": model.id,
        "trajectory_groups": groups_of(name),
        "experimental_config": {"learning_rate": 5e-6, "loss_fn": "cispo"},  # ART's defaults
    }
    job = client._call("POST", "/preview/training-jobs", dict, json=body)
    events = _events(client, job["id"])
    assert events[-1].type == "training_ended", events[-1].data
    step = [e for e in events if e.type == "gradient_step"][-1].data
    assert step["num_trainable_tokens"] > 0 and step["num_groups_trainable"] >= 1
    assert len(list(client.checkpoints.iter(model.id))) == before + 1


def test_exchanges_trajectories_are_model_turns_with_their_exact_tokens(tokenizer):
    (group, *_) = groups_of("art_groups_exchanges_wire.json")
    parsed = TrajectoryGroup.model_validate(group)
    assert all(t.is_trainable() for t in parsed.trajectories)
    samples, stats = rl_samples([parsed], Tokenization(tokenizer), {})
    exchange = group["trajectories"][0]["exchanges"]["chat_completions"][0]
    prompt = exchange["response"]["prompt_token_ids"]
    completion = exchange["response"]["choices"][0]["token_ids"]
    assert any(s.ids == prompt + completion and s.start == len(prompt) for s in samples)
    assert all(s.old_logprobs and len(s.old_logprobs) == len(s.ids) - s.start for s in samples)
    assert stats["num_groups_trainable"] == 1


def test_metadata_holds_any_json_value():
    parsed = TrajectoryGroup.model_validate(wire("art_metadata_variants_wire.json")["meta_list"])
    assert {"tags": ["a", "b"], "nested": {"x": 1}} in [t.metadata for t in parsed.trajectories]


CONVERSATION = [
    {"role": "user", "content": "Say one."},
    {"role": "assistant", "content": "One."},
    {"role": "user", "content": "Now say two."},
    {"role": "assistant", "content": "Two."},
]


def test_assistant_turns_last_masks_every_earlier_assistant_turn(tokenizer):
    tok = Tokenization(tokenizer)
    ids_all, mask_all = tok.assistant_spans(CONVERSATION, None, "all")
    ids_last, mask_last = tok.assistant_spans(CONVERSATION, None, "last")
    assert ids_all == ids_last
    trained_last = tokenizer.decode([i for i, m in zip(ids_last, mask_last, strict=True) if m])
    trained_all = tokenizer.decode([i for i, m in zip(ids_all, mask_all, strict=True) if m])
    assert "Two." in trained_last and "One." not in trained_last
    assert "One." in trained_all and "Two." in trained_all


@pytest.mark.slow
def test_arts_sft_request_trains_and_unknown_config_keys_are_reported(client, backend):
    model = client.models.create(
        project="art-wire", name="art-sft", base_model=backend.model_id, return_existing=True
    )
    url = client.local_artifacts.publish(
        [{"messages": CONVERSATION}], entity=model.entity, project="art-wire", name="art-sft-data"
    )["url"]
    body = {  # ART 0.5.23's body: assistant_turns always sent, metric_logging too
        "model_id": model.id,
        "training_data_url": url,
        "config": {
            "batch_size": "auto",
            "learning_rate": 1e-4,
            "assistant_turns": "last",
            "metric_logging": {"step_metric": "step"},
            "a_key_from_the_future": 1,
        },
    }
    job = client._call("POST", "/preview/sft-training-jobs", dict, json=body)
    events = _events(client, job["id"])
    assert events[-1].type == "training_ended", events[-1].data
    started = next(e for e in events if e.type == "training_started")
    assert started.data["ignored_config_keys"] == ["a_key_from_the_future"]


def test_an_unknown_event_type_is_kept_not_an_error():
    from wandb_serverless.api.types import TrainingJobEvent

    event = TrainingJobEvent.model_validate(
        {"id": "e1", "type": "checkpoint_uploaded", "data": {"step": 3}, "extra": True}
    )
    assert event.type == "checkpoint_uploaded" and not event.is_terminal
    assert event.model_extra == {"extra": True}
