"""Rollouts exported as Weave traces, against an in-process Weave trace server (no network)."""

from __future__ import annotations

import inspect

import pytest
import weave  # the [weave] extra, which `make test` installs

from wandb_serverless.rollouts import LLMCall, rollout
from wandb_serverless.rollouts.recorder import WEAVE_GUARD, make_choice
from wandb_serverless.rollouts.weave_export import log_trajectory, unpack_turn

LOGPROBS = {"content": [{"token": "token_id:7", "logprob": -0.2, "bytes": [1], "top_logprobs": []}]}
USER = {"role": "user", "content": "weather in Paris?"}
CALL = {
    "id": "c1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
TOOL = {"role": "tool", "tool_call_id": "c1", "content": "sunny"}


def choice(content=None, calls=None):
    body = {"content": content, **({"tool_calls": calls} if calls else {})}
    finish = "tool_calls" if calls else "stop"
    return make_choice(body, finish_reason=finish, logprobs=LOGPROBS, token_ids=[7])


def test_weave_surface_this_export_relies_on():
    """Contract test: fails loudly when a weave upgrade moves what the export calls."""
    from weave.trace.weave_client import WeaveClient

    assert weave.__version__.startswith("0.54.")
    create = inspect.signature(WeaveClient.create_call).parameters
    assert {"op", "inputs", "parent", "attributes", "display_name", "use_stack"} <= set(create)
    assert {"call", "output", "exception"} <= set(
        inspect.signature(WeaveClient.finish_call).parameters
    )
    assert callable(weave.get_client)


def test_a_rollout_becomes_a_weave_trace_with_its_reward_as_feedback(traced):
    server, client = traced
    with rollout(group="paris", metadata={"city": "Paris"}, weave=True) as run:
        run.add_call(LLMCall([USER], None, choice(calls=[CALL])))
        run.add_call(LLMCall([USER, choice(calls=[CALL])["message"], TOOL], None, choice("Sunny.")))
        run.add_call(LLMCall([{"role": "user", "content": "judge"}], None, choice("ok")))
        run.reward = 0.75
    client.flush()
    (root,) = client.get_calls(filter={"trace_roots_only": True})
    assert "rollout" in root.op_name and root.attributes["city"] == "Paris"
    assert root.output["reward"] == 0.75 and root.output["trainable"] is True
    assert root.inputs["messages"] == [USER]
    calls = list(client.get_calls(filter={"trace_ids": [root.trace_id]}))
    chats = [c for c in calls if "chat" in c.op_name]
    assert len(chats) == 3  # two turns of the main history, one of the judge's side history
    # the main history's first turn (the tool call); the client may send calls out of order
    first = next(
        c for c in chats if c.parent_id == root.id and c.output["message"].get("tool_calls")
    )
    assert isinstance(first.output["exact_tokens"], str)  # one string: cheap for Weave to log
    tokens = unpack_turn(dict(first.output))
    assert tokens["token_ids"] == [7] and tokens["logprobs"]["content"]
    assert first.inputs["messages"] == [USER]
    (feedback,) = server.feedback
    assert feedback["feedback_type"] == "reward" and feedback["payload"] == {"value": 0.75}
    assert feedback["weave_ref"].endswith(f"/call/{root.id}")
    assert run.trajectory.metadata["rollout_id"] in root.attributes["rollout_id"]


def test_a_stored_trajectory_can_be_logged_later(traced):
    server, client = traced
    with rollout(group="later") as run:
        run.add_call(LLMCall([USER], None, choice("Sunny.")))
    run.trajectory.reward = 1.0  # e.g. after a judge scored the group
    root_id = log_trajectory(run.trajectory)
    client.flush()
    assert client.get_call(root_id).output["reward"] == 1.0
    assert server.feedback[-1]["payload"] == {"value": 1.0}


def test_a_weave_failure_never_fails_the_rollout(traced):
    class Broken:
        def create_call(self, *args, **kwargs):
            raise ConnectionError("weave is down")

    errors = WEAVE_GUARD.errors
    with rollout(group="g", weave=Broken()) as run:
        run.add_call(LLMCall([USER], None, choice("Sunny.")))
        run.reward = 1.0
    assert run.trajectory.reward == 1.0 and WEAVE_GUARD.errors == errors + 1


def test_without_weave_init_the_error_says_what_to_do():
    from weave.trace.context import weave_client_context

    weave_client_context.set_weave_client_global(None)
    with rollout() as run:
        run.add_call(LLMCall([USER], None, choice("x")))
    with pytest.raises(RuntimeError, match=r"weave\.init"):
        log_trajectory(run.trajectory)


def test_rollouts_without_weave_init_say_so_in_one_line_once(caplog, monkeypatch):
    """Not a traceback a rollout: one warning, no ERROR record (which Weave's Sentry logging
    hook would try to send out, from an offline machine too)."""
    from weave.trace.context import weave_client_context

    weave_client_context.set_weave_client_global(None)
    monkeypatch.setattr(WEAVE_GUARD, "_logged", False)
    errors = WEAVE_GUARD.errors
    with caplog.at_level("WARNING"):
        for _ in range(3):
            with rollout(group="g", weave=True) as run:
                run.add_call(LLMCall([USER], None, choice("Sunny.")))
    said = [r for r in caplog.records if r.name.startswith("wandb_serverless")]
    assert len(said) == 1 and said[0].levelname == "WARNING" and said[0].exc_info is None
    assert "weave.init" in said[0].getMessage() and WEAVE_GUARD.errors == errors + 3


def test_a_weave_client_that_is_not_the_global_one_gets_the_export(monkeypatch):
    """``rollout(weave=client)``, as the docstring allows, with no ``weave.init``: weave traces
    through its global client only, so the export makes the given one global while it runs."""
    from support.weave_fake import FakeTraceServer, weave_client
    from weave.trace.context import weave_client_context

    server = FakeTraceServer()
    client = weave_client(server)
    weave_client_context.set_weave_client_global(None)  # a client of one's own, not weave.init's
    errors = WEAVE_GUARD.errors
    with rollout(group="own", weave=client) as run:
        run.add_call(LLMCall([USER], None, choice("Sunny.")))
        run.reward = 0.5
    client.flush()
    assert WEAVE_GUARD.errors == errors and weave_client_context.get_weave_client() is None
    assert server.feedback[-1]["payload"] == {"value": 0.5}
    other = weave_client(FakeTraceServer())  # now weave.init's client is another one
    try:
        with pytest.raises(RuntimeError, match="pass weave=True"):
            log_trajectory(run.trajectory, client=client)
    finally:
        weave_client_context.set_weave_client_global(None)
    assert other is not client
