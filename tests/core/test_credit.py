"""Roles and step rewards: what each recorded turn says of itself, each role's view of a run,
rewards for a turn, a tool call or a step, and the per-turn groups training is sent."""

from __future__ import annotations

import logging
import math

import pytest

from wandb_serverless.rollouts import RolloutStore, TrajectoryGroup, role, rollout, step
from wandb_serverless.rollouts.credit import (
    check_trainable_context,
    role_groups,
    step_groups,
    turn_of,
    turn_returns,
)
from wandb_serverless.rollouts.recorder import record_turn
from wandb_serverless.training import trainable_groups
from wandb_serverless.trajectory import Choice

USER = {"role": "user", "content": "plan a trip"}


def logprobs(ids):
    return {
        "content": [{"token": f"token_id:{i}", "logprob": -0.5, "top_logprobs": []} for i in ids]
    }


def say(messages, text, ids, *, role_name=None, model="m", calls=None, exact=True):
    """One model turn through the recorder, as the model layer hands it over."""
    message = {"content": text}
    if calls:
        message["tool_calls"] = [
            {"id": c, "type": "function", "function": {"name": "search", "arguments": "{}"}}
            for c in calls
        ]
    record_turn(
        messages,
        None,
        message,
        finish_reason="tool_calls" if calls else "stop",
        logprobs=logprobs(ids) if exact else None,
        token_ids=ids if exact else None,
        prompt_token_ids=[1, 2, 3],
        model=model,
        role=role_name,
    )
    return [*messages, {"role": "assistant", **message}]


def two_role_run(store, group="g", reward=1.0):
    """A planner and an executor in one conversation, plus the executor's side conversation."""
    with rollout(group=group, store=store) as run:
        with role("planner"):
            convo = say([USER], "step 1: search", [10, 11])
        convo = say([*convo, {"role": "user", "content": "go"}], "done", [20], role_name="executor")
        say([{"role": "system", "content": "summarise"}], "short", [30], role_name="executor")
        run.reward = reward
    return run


def test_each_turn_records_its_model_role_step_and_index():
    with rollout() as run:
        with role("planner"), step("plan"):
            say([USER], "a", [5], model="planner-model")
        say([USER], "b", [6], role_name="executor")
    turns = [turn_of(c) for h in [run.trajectory, *run.trajectory.additional_histories]
             for c in h.choices()]  # fmt: skip
    assert turns[0] == {"model": "planner-model", "role": "planner", "step": "plan", "index": 0}
    assert turns[1] == {"model": "m", "role": "executor", "index": 1}


def test_a_role_trains_its_own_turns_and_sees_the_others_as_context(tmp_path):
    store = RolloutStore(tmp_path / "r.db")
    for reward in (0.0, 1.0):
        two_role_run(store, reward=reward)

    planner = store.groups(role="planner")
    (trajectory,) = planner[0].trajectories[:1]
    choices = trajectory.choices()
    assert [c.model_extra["token_ids"] for c in choices] == [[10, 11]]  # exact, as produced
    assert trajectory.messages()[-1] == {"role": "assistant", "content": "done"}  # context
    assert trajectory.additional_histories == []  # the executor's side conversation: not its
    assert trajectory.metadata["role"] == "planner" and planner[0].metadata["role"] == "planner"

    executor = store.groups(role="executor")[0].trajectories[0]
    trained = [c.model_extra["token_ids"] for h in [executor, *executor.additional_histories]
               for c in h.choices()]  # fmt: skip
    assert trained == [[20], [30]]
    assert [r.reward for r in store.groups(role="executor")[0].trajectories] == [0.0, 1.0]


def test_a_role_no_turn_has_is_an_error_naming_the_roles(tmp_path):
    store = RolloutStore(tmp_path / "r.db")
    two_role_run(store)
    with pytest.raises(ValueError, match=r"'critic'.*\['executor', 'planner'\]"):
        store.groups(role="critic")
    with pytest.raises(ValueError, match="role must be"):
        role_groups(store.groups(), "")
    with pytest.raises(ValueError, match="non-empty"):
        role(" ")


def test_turns_naming_no_role_are_context_counted_and_logged(tmp_path, caplog):
    store = RolloutStore(tmp_path / "r.db")
    with rollout(group="g", store=store):
        convo = say([USER], "unnamed", [7])  # recorded with no role
        say(convo, "planned", [8], role_name="planner")
    with caplog.at_level(logging.WARNING):
        (group,) = store.groups(role="planner")
    assert [c.model_extra["token_ids"] for c in group.trajectories[0].choices()] == [[8]]
    assert "1 trainable turn(s) name no role" in caplog.text


def test_step_rewards_for_a_turn_a_tool_call_and_a_step():
    with rollout() as run:
        with step("search"):
            convo = say([USER], None, [1], calls=["call_a"])
        with step("answer"):
            convo = say(convo, "x", [2])
            say(convo, "y", [3])
        run.reward_tool_call("call_a", -1.0)
        run.reward_step("answer", 0.5)  # the last turn made in the step
        run.reward_turn(0.25, 1)
        run.reward_turn(0.25, 1)  # rewards of one turn add up
    rewards = [turn_of(c).get("reward") for c in run.trajectory.choices()]
    assert rewards == [-1.0, 0.5, 0.5]


def test_bad_step_rewards_are_clear_errors():
    with rollout() as run:
        convo = say([USER], None, [1], calls=["call_a"])
        say(convo, "plain", None, exact=False)
        with pytest.raises(ValueError, match="has 2 recorded model turn"):
            run.reward_turn(1.0, 5)
        with pytest.raises(ValueError, match="without exact tokens"):
            run.reward_turn(1.0, 1)
        with pytest.raises(ValueError, match=r"'call_zzz'.*\['call_a'\]"):
            run.reward_tool_call("call_zzz", 1.0)
        with pytest.raises(ValueError, match=r"no turn .* step 'nope'"):
            run.reward_step("nope", 1.0)
        with pytest.raises(ValueError, match="finite"):
            run.reward_turn(math.nan, 0)
        with pytest.raises(ValueError, match="a number"):
            run.reward_turn("high", 0)
    assert run.step_rewards == {}


def test_a_turn_rewarded_after_the_run_updates_the_stored_trajectory(tmp_path):
    store = RolloutStore(tmp_path / "r.db")
    with rollout(group="g", store=store) as run:
        say([USER], "a", [1])
    run.reward_turn(0.75, 0)
    (stored,) = store.query()
    assert turn_of(stored.choices()[0])["reward"] == 0.75
    assert turn_of(run.trajectory.choices()[0])["reward"] == 0.75


def test_each_turn_gets_the_discounted_return_from_its_own_step_on():
    with rollout() as run:
        convo = say([USER], "a", [1])
        convo = say(convo, "b", [2])
        say(convo, "c", [3])
        run.reward_turn(-1.0, 0)
        run.reward_turn(0.5, 2)
        run.reward = 2.0  # the run's reward comes at the last turn
    returns = [value for _, value in turn_returns(run.trajectory, discount=0.5)]
    assert returns == [-1.0 + 0.5 * (0.0 + 0.5 * 2.5), 0.5 * 2.5, 2.5]
    assert [value for _, value in turn_returns(run.trajectory)] == [1.5, 2.5, 2.5]


def test_step_groups_compare_the_same_turn_of_a_scenario_with_one_trainable_turn_each():
    runs = []
    for first in (-1.0, 0.0):
        with rollout(group="trip") as run:
            convo = say([USER], "a", [1])
            say(convo, "b", [2])
            run.reward_turn(first, 0)
            run.reward = 1.0
        runs.append(run.trajectory)
    groups = step_groups([TrajectoryGroup(trajectories=runs, metadata={"group": "trip"})])
    assert [g.metadata["group"] for g in groups] == ["trip#turn0", "trip#turn1"]
    assert groups[0].rewards == [0.0, 1.0] and groups[1].rewards == [1.0, 1.0]
    second = groups[1].trajectories[0]
    assert len(second.choices()) == 1 and second.choices()[0].model_extra["token_ids"] == [2]
    assert second.messages_and_choices[1] == {"role": "assistant", "content": "a"}  # context
    first_turn = groups[0].trajectories[0]
    assert [type(i) for i in first_turn.messages_and_choices] == [dict, Choice]  # cut after it

    # what training takes: the turn-0 group has signal, the turn-1 group none (dropped)
    kept, dropped = trainable_groups([TrajectoryGroup(trajectories=runs, metadata={"group": "t"})])
    assert [g.metadata["group"] for g in kept] == ["t#turn0"] and dropped == 1
    with pytest.raises(ValueError, match="between 0 and 1"):
        step_groups([], discount=1.5)


def test_training_without_logprobs_is_refused_where_other_turns_are_context(tmp_path):
    store = RolloutStore(tmp_path / "r.db")
    two_role_run(store)
    groups = store.groups(role="planner")
    with pytest.raises(ValueError, match="allow_training_without_logprobs"):
        check_trainable_context(groups, {"allow_training_without_logprobs": True})
    check_trainable_context(groups, {"learning_rate": 1e-5})  # exact tokens: fine
    check_trainable_context(store.groups(), {"allow_training_without_logprobs": True})
