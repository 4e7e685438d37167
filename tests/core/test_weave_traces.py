"""Chat calls that Weave's own integrations traced (no rollout(), no package hooks) become SFT
rows, and RL groups where the trace holds the exact tokens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.weave_fake import HTTPTraceServer, http_weave_client
from weave.trace.context import weave_client_context

from wandb_serverless.rollouts.weave_traces import WeaveTraces, feedback_score, merge
from wandb_serverless.trajectory import Choice

AGENTS = Path(__file__).resolve().parents[1] / "support" / "weave_traced_agents.py"
USER = {"role": "user", "content": "weather in Paris?"}
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
TOOL = {"role": "tool", "tool_call_id": "c1", "content": "sunny"}


def traced(messages, message, *, tokens=True, tools=None):
    """One call as Weave's openai integration records it."""
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}
    output = {"id": "x", "object": "chat.completion", "model": "m", "choices": [choice]}
    if tokens:
        choice["logprobs"] = {
            "content": [{"token": "token_id:9", "logprob": -0.1, "top_logprobs": []}]
        }
        choice["token_ids"] = [9]
        output["prompt_token_ids"] = [1, 2]
    return {"inputs": {"messages": messages, "tools": tools}, "output": output}


def test_calls_merge_into_histories_with_choices_only_where_tokens_are():
    first = traced([USER], {"content": None, "tool_calls": [CALL]})
    # the client re-sends the assistant turn its own way (content "" and no refusal key)
    resent = {**CALL, "function": {"name": "get_weather", "arguments": "{ }"}}
    echoed = {"role": "assistant", "content": "", "tool_calls": [resent]}  # re-serialised
    second = traced([USER, echoed, TOOL], {"content": "Sunny."})
    judge = traced([{"role": "user", "content": "judge this"}], {"content": "ok"}, tokens=False)
    histories, exact = merge([first, second, judge])
    main, side = histories
    assert [type(i).__name__ for i in main.messages_and_choices] == [
        "dict",
        "Choice",
        "dict",
        "Choice",
    ]
    assert main.messages_and_choices[1].model_extra["prompt_token_ids"] == [1, 2]
    assert side.messages_and_choices[-1] == {"role": "assistant", "content": "ok"}
    assert exact is False  # the judge's turn has no tokens: RL must leave this run out
    _, exact = merge([first, second])
    assert exact is True


def test_other_tools_start_another_history():
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    histories, _ = merge(
        [traced([USER], {"content": "a"}), traced([USER], {"content": "b"}, tools=tools)]
    )
    assert len(histories) == 2


def test_feedback_score_reads_rewards_and_thumbs_newest_first():
    assert feedback_score([]) is None
    up = {
        "feedback_type": "wandb.reaction.1",
        "payload": {"emoji": "👍"},
        "created_at": "2026-01-02",
    }
    low = {"feedback_type": "reward", "payload": {"value": 0.25}, "created_at": "2026-01-01"}
    assert feedback_score([up, low]) == 1.0
    assert feedback_score([low]) == 0.25
    note = {"feedback_type": "wandb.note.1", "payload": {"note": "meh"}, "created_at": "2026-01-03"}
    assert feedback_score([low, note]) == 0.25


@pytest.fixture
def global_client_cleared():
    yield
    weave_client_context.set_weave_client_global(None)


@pytest.mark.slow
def test_agents_weave_traced_become_sft_rows_and_rl_groups(backend, global_client_cleared):
    with HTTPTraceServer() as trace:
        done = subprocess.run(
            [sys.executable, str(AGENTS), trace.url, backend.base_url, backend.api_key],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        client = http_weave_client(trace.url)  # global: feedback.add needs it, as in a notebook
        traces = WeaveTraces(client=client)
        runs = {r.trajectory.messages()[0]["content"]: r for r in traces.runs()}

        langgraph = runs["Use get_weather to tell me the weather in Paris."]
        turns = [m for m in langgraph.trajectory.messages() if m["role"] == "assistant"]
        assert len(turns) >= 2 and turns[0]["tool_calls"]  # call, then answer, one history
        assert any(m["role"] == "tool" for m in langgraph.trajectory.messages())
        assert not langgraph.trainable  # ChatOpenAI asked for no logprobs: SFT only

        llamaindex = next(
            r
            for text, r in runs.items()
            if "Rome" in str(text) or "Rome" in str(r.trajectory.messages())
        )
        li_turns = [m for m in llamaindex.trajectory.messages() if m["role"] == "assistant"]
        assert li_turns[0].get("tool_calls") and len(li_turns) >= 2

        colours = [
            r for r in traces.runs() if r.trajectory.messages()[0]["content"] == "Name a colour."
        ]
        assert len(colours) == 2 and all(r.trainable for r in colours)
        choice = colours[0].trajectory.messages_and_choices[-1]
        assert isinstance(choice, Choice) and choice.model_extra["token_ids"]

        # a person's thumbs up on the LangGraph run's root, later, in the UI
        root = next(
            c
            for c in trace.server.query_calls(
                {"project_id": "team/agents", "filter": {"trace_roots_only": True}}
            )
            if c["trace_id"] == langgraph.trace_id
        )
        client.get_call(root["id"]).feedback.add_reaction("👍")
        for run, value in zip(colours, (1.0, 0.0), strict=True):
            roots = [
                c
                for c in trace.server.query_calls(
                    {"project_id": "team/agents", "filter": {"trace_ids": [run.trace_id]}}
                )
                if not c.get("parent_id")
            ]
            client.get_call(roots[0]["id"]).feedback.add("reward", {"value": value})
        client.flush()

        rows = traces.sft_rows(min_score=1.0)
        assert len(rows) == 2  # the thumbed-up agent run and the rewarded colour
        assert {r["messages"][0]["content"] for r in rows} == {
            "Use get_weather to tell me the weather in Paris.",
            "Name a colour.",
        }
        assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
        assert len(traces.sft_rows(top_k_per_prompt=None)) == len(runs) + 1

        (group,) = traces.groups()
        assert sorted(t.reward for t in group.trajectories) == [0.0, 1.0]
        assert traces.skipped == 2  # the two agent runs: no exact tokens
