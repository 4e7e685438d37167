"""Rollouts read back from Weave (the real weave client on the in-process trace server):
the groups equal what the SQLite store holds for the same rollouts, tokens included."""

from __future__ import annotations

import datetime
import inspect
import time

import pytest
import weave

from wandb_serverless.rollouts import LLMCall, RolloutStore, rollout
from wandb_serverless.rollouts.recorder import make_choice
from wandb_serverless.rollouts.weave_source import WeaveRollouts

USER = {"role": "user", "content": "weather in Paris?"}
CALL = {
    "id": "c1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
TOOL = {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


def choice(content=None, calls=None, token=7):
    body = {"content": content, **({"tool_calls": calls} if calls else {})}
    logprobs = {
        "content": [
            {"token": f"token_id:{token}", "logprob": -0.25, "bytes": [1], "top_logprobs": []}
        ]
    }
    return make_choice(
        body,
        finish_reason="tool_calls" if calls else "stop",
        logprobs=logprobs,
        token_ids=[token],
        prompt_token_ids=[1, 2, 3],
    )


def record(store, client, group, reward, *, city="Paris", side=False, fail=False):
    try:
        with rollout(group=group, metadata={"city": city}, store=store, weave=client) as run:
            first = choice(calls=[CALL], token=reward * 10 + 1)
            run.add_call(LLMCall([USER], TOOLS, first))
            second = choice(f"Sunny, {reward}", token=reward * 10 + 2)
            run.add_call(LLMCall([USER, first["message"], TOOL], TOOLS, second))
            if side:
                run.add_call(LLMCall([{"role": "user", "content": "judge"}], None, choice("ok")))
            run.reward = reward
            if fail:
                raise RuntimeError("the tool broke")
    except RuntimeError:
        pass
    return run


def comparable(group):
    def strip(t):
        data = t.model_dump(mode="json", exclude={"start_time"})
        data["metadata"].pop("weave_call_id", None)
        return data

    return sorted((strip(t) for t in group.trajectories), key=lambda t: t["metadata"]["rollout_id"])


def test_groups_from_weave_equal_the_stores_groups_with_exact_tokens(traced, tmp_path):
    _server, client = traced
    store = RolloutStore(tmp_path / "r.db")
    for reward in (0, 1, 1):
        record(store, client, "paris", reward)
    record(store, client, "paris", 0, fail=True)
    record(store, client, "judged", 1, side=True, city="Rome")
    record(store, client, None, 1)  # ungrouped: left out by both
    client.flush()

    source = WeaveRollouts(client=client)
    from_weave = {g.metadata["group"]: g for g in source.groups()}
    from_store = {g.metadata["group"]: g for g in store.groups()}
    assert sorted(from_weave) == sorted(from_store) == ["judged", "paris"]
    for name in from_store:
        assert comparable(from_weave[name]) == comparable(from_store[name])
        assert len(from_weave[name].exceptions) == len(from_store[name].exceptions)
    paris = from_weave["paris"]
    assert [e["type"] for e in paris.exceptions] == ["RuntimeError"]
    for trajectory in paris.trajectories:  # the tokens each turn was sampled as
        first, second = trajectory.messages_and_choices[1], trajectory.messages_and_choices[3]
        sampled = int(trajectory.reward) * 10
        assert first.model_extra["token_ids"] == [sampled + 1]
        assert second.model_extra["token_ids"] == [sampled + 2]
        assert first.logprobs.content[0].token == f"token_id:{sampled + 1}"
        assert first.model_extra["prompt_token_ids"] == [1, 2, 3]
    side = from_weave["judged"].trajectories[0].additional_histories
    assert len(side) == 1 and side[0].messages_and_choices[-1].message.content == "ok"
    assert all(t.metadata["weave_call_id"] for g in from_weave.values() for t in g.trajectories)


def test_a_reward_added_later_as_feedback_wins(traced, tmp_path):
    _server, client = traced
    runs = [record(None, client, "g", 0) for _ in range(2)]
    client.flush()
    source = WeaveRollouts(client=client)
    assert [t.reward for t in source.groups()[0].trajectories] == [0.0, 0.0]
    (later,) = [r for r in source.rollouts() if r.trajectory.metadata["rollout_id"] == runs[1].id]
    time.sleep(0.01)
    client.get_call(later.call_id).feedback.add("reward", {"value": 0.8})  # a judge, later
    client.flush()
    rewards = {
        t.metadata["rollout_id"]: t.reward
        for t in WeaveRollouts(client=client).groups()[0].trajectories
    }
    assert rewards == {runs[0].id: 0.0, runs[1].id: 0.8}


def test_a_reward_function_reads_any_feedback_and_none_leaves_a_rollout_out(traced):
    _server, client = traced
    runs = [record(None, client, "g", 0) for _ in range(3)]
    client.flush()
    up, down = (
        client.get_call(r.call_id) for r in list(WeaveRollouts(client=client).rollouts())[:2]
    )
    up.feedback.add_reaction("👍")
    down.feedback.add_reaction("👎")
    client.flush()

    def thumbs(feedback, trajectory):
        emojis = [f["payload"].get("emoji") for f in feedback if "reaction" in f["feedback_type"]]
        return None if not emojis else 1.0 if emojis[-1] == "👍" else 0.0

    (group,) = WeaveRollouts(client=client, reward=thumbs).groups()
    assert sorted(t.reward for t in group.trajectories) == [0.0, 1.0]
    assert len(group.trajectories) == 2 and len(runs) == 3


def test_filters_by_group_metadata_and_time_window(traced):
    server, client = traced
    record(None, client, "a", 1, city="Paris")
    client.flush()
    middle = datetime.datetime.now(datetime.UTC)
    time.sleep(0.01)
    record(None, client, "b", 0, city="Rome")
    record(None, client, "a", 0, city="Rome")
    client.flush()
    source = WeaveRollouts(client=client, page_size=1)  # one root per request: pages work
    assert len(list(source.rollouts())) == 3
    assert [len(g.trajectories) for g in source.groups(group="a")] == [2]
    assert {g.metadata["group"] for g in source.groups(metadata={"city": "Rome"})} == {"a", "b"}
    late = source.groups(since=middle)
    assert sorted(g.metadata["group"] for g in late) == ["a", "b"]
    assert [len(g.trajectories) for g in source.groups(until=middle)] == [1]
    assert server.queries > 6


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="page_size"):
        WeaveRollouts(client=object(), page_size=0)


def test_weave_surface_the_reader_and_trainer_rely_on():
    """Contract test: fails loudly when a weave upgrade moves what reading back calls."""
    from weave.trace.weave_client import WeaveClient
    from weave.trace_server_bindings.remote_http_trace_server import RemoteHTTPTraceServer
    from weave.vendor.weave_server_sdk.types import call_stream_query_params as params

    assert weave.__version__.startswith("0.54.")
    assert {"filter", "query", "sort_by", "limit", "offset", "include_feedback"} <= set(
        params.CallStreamQueryParams.__annotations__
    )
    assert {"op_names", "trace_roots_only", "call_ids", "trace_ids"} <= set(
        params.Filter.__annotations__
    )
    for method in ("calls_query_stream", "feedback_create_batch"):
        assert callable(getattr(RemoteHTTPTraceServer, method))
    assert "server" in inspect.signature(WeaveClient.__init__).parameters
    # feedback comes back in the summary, where the client parses it
    from weave.trace.call import _parse_summary

    parsed = _parse_summary({"weave": {"feedback": [{"created_at": "2026-01-01T00:00:00Z"}]}})
    assert parsed["weave"]["feedback"][0]["created_at"].year == 2026


def test_a_root_that_is_not_a_trajectory_is_left_out_not_fatal(traced):
    server, client = traced
    record(None, client, "g", 1)
    client.flush()
    (good,) = server.query_calls({"project_id": "local/test", "filter": {"trace_roots_only": True}})
    server.calls["bad"] = {
        **good, "id": "bad", "trace_id": "bad-trace",
        "output": {"messages": [{"role": "assistant", "content": 5}], "reward": "high"},
    }  # fmt: skip
    source = WeaveRollouts(client=client)
    assert [len(g.trajectories) for g in source.groups()] == [1]
    assert source.unreadable == 1


def test_roles_and_step_rewards_survive_weave_and_each_role_reads_its_own_turns(traced):
    _, client = traced
    for reward in (0, 1):
        with rollout(group="duo", weave=client) as run:
            run.add_call(LLMCall([USER], TOOLS, choice(calls=[CALL], token=3),
                                 {"role": "planner", "step": "plan"}))  # fmt: skip
            run.add_call(LLMCall([USER, choice(calls=[CALL])["message"], TOOL], TOOLS,
                                 choice("sunny", token=4), {"role": "executor"}))  # fmt: skip
            run.reward_step("plan", 0.5)
            run.reward = reward
    client.flush()
    source = WeaveRollouts(client=client)
    (planner,) = source.groups(role="planner")
    for trajectory in planner.trajectories:
        (own,) = trajectory.choices()
        assert own.model_extra["turn"] == {"role": "planner", "step": "plan", "index": 0,
                                           "reward": 0.5}  # fmt: skip
        assert trajectory.messages()[-1]["content"] == "sunny"  # the executor's: context
    (executor,) = source.groups(role="executor")
    assert [c.model_extra["token_ids"] for c in executor.trajectories[0].choices()] == [[4]]
    with pytest.raises(ValueError, match="'critic'"):
        source.groups(role="critic")
