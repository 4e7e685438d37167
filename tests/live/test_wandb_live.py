"""Against the real W&B services (docs/hosted.md): they run when WANDB_API_KEY is set and are
skipped, with that reason, otherwise (nothing else in the suite reaches W&B).

    WANDB_API_KEY=... WANDB_ENTITY=my-team WANDB_PROJECT=my-project \\
        .venv/bin/python -m pytest -m live tests/live
"""

from __future__ import annotations

import os
import uuid

import pytest
from pydantic import BaseModel

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not os.environ.get("WANDB_API_KEY"),
        reason="live W&B tests need WANDB_API_KEY (and WANDB_ENTITY/WANDB_PROJECT)",
    ),
]
CHAT_MODEL = os.environ.get("WANDB_LIVE_CHAT_MODEL", "meta-llama/Llama-3.1-8B-Instruct")
BASE_MODEL = os.environ.get("WANDB_LIVE_BASE_MODEL", "OpenPipe/Qwen3-14B-Instruct")


def test_lists_the_inference_models():
    from wandb_serverless.api import Client

    assert Client().list_models()


def test_one_chat_call_with_tools_and_structured_output():
    from langchain_core.tools import tool

    from langchain_wandb import ChatWandb

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        return "sunny"

    class City(BaseModel):
        name: str

    llm = ChatWandb(model=CHAT_MODEL, max_tokens=64)
    calls = llm.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?").tool_calls
    assert calls and calls[0]["name"] == "get_weather"
    assert llm.with_structured_output(City).invoke("Name a city in France.").name


def test_registers_and_deletes_a_model():
    from wandb_serverless.api import Client

    client = Client()
    project = os.environ.get("WANDB_PROJECT", "wandb-serverless-live")
    model = client.models.create(
        project=project,
        name=f"live-{uuid.uuid4().hex[:8]}",
        base_model=BASE_MODEL,
        return_existing=True,
    )
    try:
        assert model.id and model.entity
    finally:
        client.models.delete(model.id)


def test_rollouts_round_trip_through_weave_and_train_once(tmp_path):
    """Export two rollouts of one group to a scratch Weave project, read them back with their
    tokens, and take them with a trainer: claimed and marked once (the step itself is the
    recording stub: no training job on W&B from a test)."""
    import weave

    from wandb_serverless.rollouts import LLMCall, rollout
    from wandb_serverless.rollouts.recorder import make_choice
    from wandb_serverless.rollouts.weave_source import WeaveRollouts
    from wandb_serverless.training import TrainResult
    from wandb_serverless.weave_training import WeaveTrainer

    entity = os.environ.get("WANDB_ENTITY")
    project = f"{entity}/wandb-serverless-live-{uuid.uuid4().hex[:8]}"
    client = weave.init(project)
    group = f"g-{uuid.uuid4().hex[:8]}"
    logprobs = {"content": [{"token": "token_id:5", "logprob": -0.5, "top_logprobs": []}]}
    for reward in (0.0, 1.0):
        with rollout(group=group, weave=True) as run:
            choice = make_choice(
                {"content": "hi"}, finish_reason="stop", logprobs=logprobs, token_ids=[5],
                prompt_token_ids=[1, 2],
            )  # fmt: skip
            run.add_call(LLMCall([{"role": "user", "content": "hello"}], None, choice))
            run.reward = reward
    client.flush()
    source = WeaveRollouts(client=client)
    (read,) = source.groups(group=group)
    assert sorted(t.reward for t in read.trajectories) == [0.0, 1.0]
    assert read.trajectories[0].messages_and_choices[-1].model_extra["token_ids"] == [5]
    taken: list[str] = []

    def train(groups):
        taken.extend(t.metadata["weave_call_id"] for g in groups for t in g.trajectories)
        return TrainResult(1)

    trainer = WeaveTrainer(
        None, source, state_file=tmp_path / "t.json", train=train, latest_step=lambda: 0
    )
    assert trainer.step() is not None and len(taken) == 2
    assert trainer.step() is None and len(taken) == 2


def test_a_learning_loop_step_is_evaluated_and_promoted_on_wandb(tmp_path):
    """One loop step on W&B: sample from the base model, one RL job, evaluate, and serve the
    checkpoint as a W&B artifact alias that chat then resolves (a scratch model, deleted)."""
    from langchain_wandb import ChatWandb
    from wandb_serverless import TrainableModel
    from wandb_serverless.learning import LearningLoop, Sampling

    project = os.environ.get("WANDB_PROJECT", "wandb-serverless-live")
    tm = TrainableModel(f"live-loop-{uuid.uuid4().hex[:8]}", project, BASE_MODEL, progress=False)

    async def play(city: str, sampling: Sampling) -> float:
        llm = ChatWandb(model=sampling.model, temperature=1.0, max_tokens=16, seed=sampling.seed)
        reply = await llm.ainvoke(f"Name one landmark in {city}, in a few words.")
        return float(len(reply.text.split()) <= 4)

    loop = LearningLoop(
        tm, play, train_scenarios=["Paris", "Rome"], eval_scenarios=["Lima"], group_size=4,
        groups_per_step=2, tolerance=1.0, state_dir=tmp_path / "loop", progress=False,
    )  # fmt: skip
    try:
        (report,) = loop.run(steps=1)
        assert report.checkpoint == 1 and report.decision == "promoted"
        assert report.price_usd is not None and report.price_usd > 0
        assert tm.served_step("production") == 1
        reply = ChatWandb(model=loop.served_ref, max_tokens=8).invoke("Hello")
        assert reply.content
    finally:
        tm.client.models.delete(tm.id)
