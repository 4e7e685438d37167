"""Reward helpers and the RULER-style judge running on ChatWandb against the local backend."""

from __future__ import annotations

import pytest

from langchain_wandb import ChatWandb
from wandb_serverless.rollouts import Trajectory, TrajectoryGroup
from wandb_serverless.rollouts.rewards import (
    group_advantages,
    judge_prompt,
    rank_rewards,
    ruler_score_group,
    score_group,
    score_trajectories,
)


def group_of(*answers: str) -> TrajectoryGroup:
    question = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    return TrajectoryGroup(
        trajectories=[
            Trajectory(
                messages_and_choices=[*question, {"role": "assistant", "content": a}], reward=0.1
            )
            for a in answers
        ]
    )


def test_reward_functions_per_trajectory_and_per_group():
    group = score_trajectories(
        group_of("Paris", "Rome"), lambda t: "Paris" in t.messages()[-1]["content"]
    )
    assert group.rewards == [1.0, 0.0]
    group = score_group(
        group, lambda ts: rank_rewards([len(t.messages()[-1]["content"]) for t in ts])
    )
    assert group.rewards == [1.0, 0.0]
    with pytest.raises(ValueError, match="returned 1 rewards for 2"):
        score_group(group, lambda ts: [1.0])


def test_group_advantages_are_relative_to_the_mean():
    assert group_advantages([1.0, 0.0, 0.0, 1.0], scale=False) == [0.5, -0.5, -0.5, 0.5]
    assert group_advantages([2.0, 2.0]) == [0.0, 0.0]


def test_the_judge_prompt_shares_the_prefix_once():
    prompt = judge_prompt(group_of("Paris", "Rome"))
    assert prompt.count("What is the capital of France?") == 1
    assert (
        '<trajectory id="1">\nassistant: Paris' in prompt
        and '<trajectory id="2">\nassistant: Rome' in prompt
    )


def test_ruler_judge_scores_every_trajectory_with_an_explanation(backend):
    judge = ChatWandb(
        model="default",
        base_url=backend.base_url,
        api_key=backend.api_key,
        temperature=0,
        max_tokens=200,
    )
    scored = ruler_score_group(group_of("Paris", "Rome", "I do not know"), judge)
    assert len(scored.trajectories) == 3
    for trajectory in scored.trajectories:
        assert 0.0 <= trajectory.reward <= 1.0 and trajectory.metrics["independent_reward"] == 0.1
        assert trajectory.logs[-1].startswith("judge: ")
