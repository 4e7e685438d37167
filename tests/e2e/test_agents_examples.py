"""The examples of agents as they are built, end to end on the local backend: OpenAI's Agents
SDK recorded through its own client and trained; a LangGraph planner and executor, each role's
model trained from the same runs on its own turns only."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

from wandb_serverless import capture
from wandb_serverless.rollouts.credit import turn_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def all_choices(trajectory):
    return [c for h in [trajectory, *trajectory.additional_histories] for c in h.choices()]


@pytest.mark.slow
async def test_an_agents_sdk_agent_is_recorded_through_its_own_client_and_trains(
    backend, tokenizer, tmp_path
):
    example = load("openai_agents")
    responses_before = capture.STATS.responses_api
    args = argparse.Namespace(groups=2, group_size=3, lr=1e-3, seed=1, out=str(tmp_path))
    result = await example.train(backend, args, tmp_path)

    runs = [t for g in result["store"].groups() for t in g.trajectories]
    assert len(runs) == 6 and capture.STATS.responses_api == responses_before
    for trajectory in runs:
        choices = all_choices(trajectory)
        assert choices, "every run's turns are recorded with exact tokens"
        first = choices[0]
        assert first.message.tool_calls  # tool_choice="required": the first turn calls a tool
        assert trajectory.tools and {t["function"]["name"] for t in trajectory.tools} == {
            "get_temperature",
            "get_local_time",
        }
        for choice in choices:
            ids = choice.model_extra["token_ids"]
            assert (
                len(ids) == len(choice.logprobs.content) and choice.model_extra["prompt_token_ids"]
            )
            if choice.message.content and not choice.message.tool_calls:
                assert tokenizer.decode(ids, skip_special_tokens=True) == choice.message.content
    if result["result"].step:  # trained (some group's rewards differed): served from it
        assert result["model"].ref.endswith(":latest")


@pytest.mark.slow
async def test_each_role_trains_its_own_model_on_its_own_turns(backend, tmp_path, monkeypatch):
    example = load("multi_agent")
    trained: dict[str, list] = {}
    original = example.TrainableModel.train_rl

    def spy(self, groups, config=None, **kwargs):
        trained[self.name] = list(groups)
        return original(self, groups, config, **kwargs)

    monkeypatch.setattr(example.TrainableModel, "train_rl", spy)
    # learning is not under test here: the roles are; make every group carry a signal
    monkeypatch.setattr(example, "answer_reward", lambda messages, city: float(len(messages) % 2))
    args = argparse.Namespace(steps=1, groups=2, group_size=3, lr=1e-3, seed=3, out=str(tmp_path))
    result = await example.train(backend, args, tmp_path)

    for role in example.ROLES:
        groups = trained[f"{role}-3"]
        assert groups and all(g.metadata["role"] == role for g in groups)
        turns = [turn_of(c) for g in groups for t in g.trajectories for c in all_choices(t)]
        assert turns and {t["role"] for t in turns} == {role}  # never another role's turn
    planner_turns = [turn_of(c) for g in trained["planner-3"] for t in g.trajectories
                     for c in all_choices(t)]  # fmt: skip
    assert {t["step"] for t in planner_turns} == {"plan"}  # the LangGraph node
    assert all("reward" in t for t in planner_turns)  # the planner's step reward
    assert set(result["before"]) == set(result["after"]) == {"planner", "executor"}
    assert all(0.0 <= v <= 1.0 for v in [*result["before"].values(), *result["after"].values()])
