"""Calls through any openai client are recorded inside a rollout (OpenAI's Agents SDK, Pydantic
AI and others build their own clients): exact tokens asked for, streamed or not, recorded once,
the SDK left as it was when no rollout is open."""

from __future__ import annotations

import json
import logging

import openai
import pytest
from openai.resources.chat.completions import AsyncCompletions, Completions
from support.fault_server import Reply

from wandb_serverless import capture, capture_openai
from wandb_serverless.rollouts import RolloutStore, role, rollout
from wandb_serverless.rollouts.credit import turn_of
from wandb_serverless.rollouts.guard import RECORDING_GUARD
from wandb_serverless.usage import metered

KEY = "sk-test"
USER = [{"role": "user", "content": "hi"}]
EXACT = {
    "logprobs": {"content": [{"token": "token_id:7", "logprob": -0.2, "top_logprobs": []}]},
    "token_ids": [7],
}


def completion(choice_extra: dict | None = None, **top) -> dict:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": "hello"},
        "finish_reason": "stop",
        **(choice_extra or {}),
    }
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [choice],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        **top,
    }


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0)


def test_a_plain_client_call_in_a_rollout_is_recorded_with_exact_tokens(fault_server):
    fault_server.on(
        "POST", "/chat/completions", Reply(200, completion(EXACT, prompt_token_ids=[1, 2]))
    )
    fault_server.routes[("POST", "/v1/chat/completions")][0].headers["x-request-id"] = "req-1"
    oai = client(fault_server)
    with rollout() as run, role("helper"):
        reply = oai.chat.completions.create(model="m", messages=USER)
    assert capture.installed()
    # the caller gets what it asked for: the tokens capture asked for are not in its object
    assert reply.choices[0].message.content == "hello" and reply.choices[0].logprobs is None
    assert not reply.choices[0].model_extra and not reply.model_extra
    assert reply._request_id == "req-1"

    sent = fault_server.calls("POST", "/chat/completions")[0].body
    assert sent["logprobs"] is True and sent["return_token_ids"] is True
    (choice,) = run.trajectory.choices()
    assert choice.model_extra["token_ids"] == [7] and choice.model_extra["prompt_token_ids"] == [
        1,
        2,
    ]
    assert turn_of(choice)["role"] == "helper" and turn_of(choice)["model"] == "m"

    oai.chat.completions.create(model="m", messages=USER)  # outside any rollout: untouched
    assert "logprobs" not in fault_server.calls("POST", "/chat/completions")[1].body
    assert capture.STATS.recorded >= 1


def test_logprobs_the_caller_asked_for_itself_reach_it(fault_server):
    fault_server.on("POST", "/chat/completions", Reply(200, completion(EXACT)))
    with rollout() as run:
        reply = client(fault_server).chat.completions.create(
            model="m", messages=USER, logprobs=True
        )
    assert reply.choices[0].logprobs.content[0].logprob == -0.2
    assert "token_ids" not in reply.choices[0].model_extra  # that one only capture asked for
    assert len(run.trajectory.choices()) == 1


def test_a_reply_capture_cannot_read_meets_the_sdks_own_handling(fault_server):
    fault_server.on("POST", "/chat/completions", Reply(200, "not json"))
    oai = client(fault_server)
    with pytest.raises(ValueError) as outside:  # the SDK: a JSONDecodeError
        oai.chat.completions.create(model="m", messages=USER)
    before = capture.STATS.unparsed
    with rollout() as run, pytest.raises(ValueError) as inside:
        oai.chat.completions.create(model="m", messages=USER)
    assert type(inside.value) is type(outside.value)  # what the caller sees is unchanged
    assert capture.STATS.unparsed == before + 1 and run.trajectory.model_turns() == 0


def test_the_callers_own_choice_of_logprobs_is_kept(fault_server):
    fault_server.on("POST", "/chat/completions", Reply(200, completion()))
    with rollout() as run:
        client(fault_server).chat.completions.create(model="m", messages=USER, logprobs=False)
    sent = fault_server.calls("POST", "/chat/completions")[0].body
    assert sent["logprobs"] is False and "return_token_ids" not in sent
    assert run.trajectory.choices() == [] and run.trajectory.model_turns() == 1  # context


def test_a_response_without_token_ids_is_context_counted_and_logged(fault_server, caplog):
    no_ids = {"logprobs": EXACT["logprobs"]}  # a server that returns no token ids
    fault_server.on("POST", "/chat/completions", Reply(200, completion(no_ids)))
    before = capture.STATS.without_token_ids
    capture._warned.discard("ids")
    with caplog.at_level(logging.WARNING), rollout() as run:
        client(fault_server).chat.completions.create(model="m", messages=USER)
    assert capture.STATS.without_token_ids == before + 1
    assert "no token ids" in caplog.text
    assert not run.trajectory.is_trainable() and run.trajectory.model_turns() == 1


def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}],
    }


def sse(*chunks: dict) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


STREAM = sse(
    {**chunk({"role": "assistant", "content": ""}), "prompt_token_ids": [1, 2]},
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "search", "arguments": '{"q"'},
                }
            ]
        },
        logprobs={"content": [{"token": "token_id:8", "logprob": -0.1, "top_logprobs": []}]},
        token_ids=[8],
    ),
    chunk(
        {"tool_calls": [{"index": 0, "function": {"arguments": ': "x"}'}}]},
        "tool_calls",
        logprobs={"content": [{"token": "token_id:9", "logprob": -0.3, "top_logprobs": []}]},
        token_ids=[9],
    ),
)


async def test_an_async_stream_is_handed_on_whole_and_recorded_at_its_end(fault_server):
    fault_server.on(
        "POST", "/chat/completions", Reply(200, STREAM, {"content-type": "text/event-stream"})
    )
    oai = openai.AsyncOpenAI(base_url=fault_server.url, api_key=KEY, max_retries=0)
    async with rollout() as run:
        stream = await oai.chat.completions.create(model="m", messages=USER, stream=True)
        assert type(stream) is openai.AsyncStream  # the SDK's own
        chunks = [c async for c in stream]
    assert len(chunks) == 3  # every chunk reaches the framework, as it asked for it
    assert not any(c.choices[0].logprobs or c.choices[0].model_extra for c in chunks)
    (choice,) = run.trajectory.choices()
    assert choice.model_extra["token_ids"] == [8, 9]
    assert choice.message.tool_calls[0].function.arguments == '{"q": "x"}'
    run.reward_tool_call("call_1", 1.0)  # the captured tool call can be rewarded


def test_the_caller_gets_the_sdks_own_stream_and_a_stream_cut_short_is_not_recorded(fault_server):
    cut = STREAM.removesuffix("data: [DONE]\n\n")  # the server never finished it
    fault_server.on(
        "POST", "/chat/completions", Reply(200, cut, {"content-type": "text/event-stream"})
    )
    fault_server.on(
        "POST", "/chat/completions", Reply(200, STREAM, {"content-type": "text/event-stream"})
    )
    oai = client(fault_server)
    with rollout() as run:
        stream = oai.chat.completions.create(model="m", messages=USER, stream=True)
        assert type(stream) is openai.Stream  # what a framework that checks the SDK's type sees
        assert len(list(stream)) == 3  # every chunk of the cut stream reaches the caller
        with oai.chat.completions.create(model="m", messages=USER, stream=True) as whole:
            assert len(list(whole)) == 3
    assert run.trajectory.model_turns() == 1  # the finished stream's turn only
    assert run.trajectory.choices()[0].model_extra["token_ids"] == [8, 9]


def test_capture_outside_rollouts_makes_a_rollout_of_each_call(fault_server, tmp_path):
    fault_server.on("POST", "/chat/completions", Reply(200, completion(EXACT)))
    store = RolloutStore(tmp_path / "r.db")
    oai = client(fault_server)
    with capture_openai(store=store, group="prod"):
        oai.chat.completions.create(model="m", messages=USER)
        oai.chat.completions.create(model="m", messages=USER)
        with pytest.raises(RuntimeError, match="already on"):
            capture_openai().__enter__()
    oai.chat.completions.create(model="m", messages=USER)  # off again: not recorded
    assert [len(t.choices()) for t in store.query(group="prod")] == [1, 1]


def test_responses_api_calls_in_a_rollout_are_warned_of_not_recorded(fault_server, caplog):
    body = {"id": "r1", "object": "response", "created_at": 0, "model": "m", "output": [],
            "status": "completed", "parallel_tool_calls": False, "tool_choice": "auto",
            "tools": []}  # fmt: skip
    fault_server.on("POST", "/responses", Reply(200, body))
    capture._warned.discard("responses")
    before = capture.STATS.responses_api
    with caplog.at_level(logging.WARNING), rollout() as run:
        client(fault_server).responses.create(model="m", input="hi")
    assert capture.STATS.responses_api == before + 1
    assert "Responses API call inside a rollout is not recorded" in caplog.text
    assert run.trajectory.model_turns() == 0


def wrapped(cls) -> bool:
    """Whether the class's ``create`` is capture's wrapper (not the SDK's own function)."""
    return cls.__dict__["create"].__code__.co_filename.endswith("capture.py")


def test_disabled_capture_leaves_the_sdk_as_it_was_and_records_nothing(fault_server):
    fault_server.on("POST", "/chat/completions", Reply(200, completion(EXACT)))
    try:
        capture.disable()
        assert not wrapped(Completions) and not wrapped(AsyncCompletions)
        with rollout() as run:
            client(fault_server).chat.completions.create(model="m", messages=USER)
        assert not wrapped(Completions) and run.trajectory.model_turns() == 0
        assert "logprobs" not in fault_server.calls("POST", "/chat/completions")[0].body
    finally:
        capture.enable()
    assert wrapped(Completions) and wrapped(AsyncCompletions)
    capture.uninstall()  # the SDK's own methods, until the next rollout
    assert not wrapped(Completions) and not capture.installed()
    with rollout():
        assert wrapped(Completions)


def lp(token_id: int) -> dict:
    return {"content": [{"token": f"token_id:{token_id}", "logprob": -0.5, "top_logprobs": []}]}


USAGE_CHUNK = {**chunk({}), "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}


def test_a_stream_records_text_reasoning_tokens_and_its_usage(fault_server):
    body = sse(
        {**chunk({"role": "assistant", "content": "", "reasoning_content": "hm"}),
         "prompt_token_ids": [1, 2]},
        chunk({"content": "hel"}, logprobs=lp(8), token_ids=[8]),
        chunk({"content": "lo"}, "stop", logprobs=lp(9), token_ids=[9]),
        USAGE_CHUNK,
    )  # fmt: skip
    fault_server.on(
        "POST", "/chat/completions", Reply(200, body, {"content-type": "text/event-stream"})
    )
    with metered() as meter, rollout() as run:
        chunks = list(
            client(fault_server).chat.completions.create(model="m", messages=USER, stream=True)
        )
    assert len(chunks) == 4
    # the caller gets the chunks it asked for: no tokens that only capture asked for
    assert all(c.choices[0].logprobs is None for c in chunks[:3])
    assert not any(c.choices[0].model_extra for c in chunks[:3])
    assert "prompt_token_ids" not in chunks[0].model_extra
    (choice,) = run.trajectory.choices()
    assert choice.message.content == "hello" and choice.message.model_extra["reasoning"] == "hm"
    assert choice.model_extra["token_ids"] == [8, 9]
    assert choice.model_extra["prompt_token_ids"] == [1, 2]
    assert [t.logprob for t in choice.logprobs.content] == [-0.5, -0.5]
    count = meter.total("model")  # a captured stream's usage is counted as a reply's is
    assert (count.calls, count.prompt_tokens, count.completion_tokens) == (1, 5, 2)


def test_a_streaming_caller_gets_the_logprobs_it_asked_for_itself(fault_server):
    body = sse(chunk({"content": "hi"}, "stop", logprobs=lp(8), token_ids=[8]))
    fault_server.on(
        "POST", "/chat/completions", Reply(200, body, {"content-type": "text/event-stream"})
    )
    with rollout() as run:
        (only,) = client(fault_server).chat.completions.create(
            model="m", messages=USER, stream=True, logprobs=True
        )
    assert only.choices[0].logprobs.content[0].logprob == -0.5
    assert "token_ids" not in only.choices[0].model_extra  # that one only capture asked for
    assert run.trajectory.choices()[0].model_extra["token_ids"] == [8]


def as_built(c) -> tuple:
    """A chunk as its caller can tell it apart: type, JSON as set and in full, fields set."""
    sets = [(x.model_fields_set, x.delta.model_fields_set) for x in c.choices]
    return type(c), c.to_dict(), c.model_dump(), c.model_fields_set, sets


def streams_with_and_without_tokens(fault_server) -> None:
    """The server's reply to a plain call, then to the same call captured (tokens asked)."""
    call = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "search", "arguments": "{}"}}]}  # fmt: skip
    plain = [chunk({"role": "assistant", "content": ""}), chunk(call), chunk({}, "tool_calls")]
    plain.append(USAGE_CHUNK)
    tokens = [{**plain[0], "prompt_token_ids": [1, 2]}, *plain[1:]]
    for i in (1, 2):
        tokens[i] = {**plain[i], "choices": [{**plain[i]["choices"][0], "logprobs": lp(7 + i),
                                              "token_ids": [7 + i]}]}  # fmt: skip
    for body in (sse(*plain), sse(*tokens)):
        fault_server.on(
            "POST", "/chat/completions", Reply(200, body, {"content-type": "text/event-stream"})
        )


def test_a_captured_streams_chunks_are_the_sdks_own_field_for_field(fault_server):
    streams_with_and_without_tokens(fault_server)
    oai = client(fault_server)
    outside = list(oai.chat.completions.create(model="m", messages=USER, stream=True))
    with rollout() as run:
        inside = list(oai.chat.completions.create(model="m", messages=USER, stream=True))
    assert [as_built(c) for c in inside] == [as_built(c) for c in outside]
    assert run.trajectory.choices()[0].model_extra["token_ids"] == [8, 9]


async def test_a_captured_async_streams_chunks_are_the_sdks_own_field_for_field(fault_server):
    streams_with_and_without_tokens(fault_server)
    oai = openai.AsyncOpenAI(base_url=fault_server.url, api_key=KEY, max_retries=0)
    outside = [c async for c in await oai.chat.completions.create(model="m", messages=USER,
                                                                  stream=True)]  # fmt: skip
    async with rollout() as run:
        stream = await oai.chat.completions.create(model="m", messages=USER, stream=True)
        inside = [c async for c in stream]
    assert [as_built(c) for c in inside] == [as_built(c) for c in outside]
    assert run.trajectory.choices()[0].model_extra["token_ids"] == [8, 9]


def test_a_strict_clients_chunks_are_validated_inside_a_rollout_as_outside(fault_server):
    invalid = {**chunk({"content": "x"}, "stop"), "created": "soon"}  # not an int
    for _ in range(2):
        fault_server.on(
            "POST",
            "/chat/completions",
            Reply(200, sse(invalid), {"content-type": "text/event-stream"}),
        )
    strict = openai.OpenAI(
        base_url=fault_server.url, api_key=KEY, max_retries=0, _strict_response_validation=True
    )
    with pytest.raises(openai.APIResponseValidationError):
        list(strict.chat.completions.create(model="m", messages=USER, stream=True))
    with rollout(), pytest.raises(openai.APIResponseValidationError):
        list(strict.chat.completions.create(model="m", messages=USER, stream=True))


def test_a_clients_own_parse_of_a_chunk_is_kept_inside_a_rollout(fault_server):
    class Tagging(openai.OpenAI):  # a framework's client that parses responses its own way
        def _process_response_data(self, *, data, cast_to, response):
            parsed = super()._process_response_data(data=data, cast_to=cast_to, response=response)
            parsed.tagged = True
            return parsed

    streams_with_and_without_tokens(fault_server)
    oai = Tagging(base_url=fault_server.url, api_key=KEY, max_retries=0)
    outside = list(oai.chat.completions.create(model="m", messages=USER, stream=True))
    with rollout() as run:
        inside = list(oai.chat.completions.create(model="m", messages=USER, stream=True))
    assert all(c.tagged for c in outside) and all(c.tagged for c in inside)
    assert [as_built(c) for c in inside] == [as_built(c) for c in outside]
    assert run.trajectory.choices()[0].model_extra["token_ids"] == [8, 9]


def test_a_malformed_chunk_reaches_a_captured_caller_as_it_reaches_any_other(fault_server):
    odd = {**chunk({"content": "x"}), "choices": 5}  # not a list: the SDK hands it on as is
    body = sse(odd, chunk({"content": "y"}, "stop", logprobs=lp(9), token_ids=[9]))
    fault_server.on(
        "POST", "/chat/completions", Reply(200, body, {"content-type": "text/event-stream"})
    )
    oai = client(fault_server)
    outside = [
        c.choices for c in oai.chat.completions.create(model="m", messages=USER, stream=True)
    ]
    with rollout() as run:
        stream = oai.chat.completions.create(model="m", messages=USER, stream=True)
        inside = [c.choices for c in stream]  # no error raised into the agent
    assert inside[0] == outside[0] == 5 and len(inside) == len(outside) == 2
    assert run.trajectory.model_turns() == 0  # not a turn capture can read: none recorded


def test_a_chunk_capture_cannot_read_leaves_the_stream_whole_and_records_no_turn(fault_server):
    unreadable = chunk({"content": "x"}, logprobs={"content": "not a list"}, token_ids=[8])
    body = sse(unreadable, chunk({"content": "y"}, "stop", logprobs=lp(9), token_ids=[9]))
    fault_server.on(
        "POST", "/chat/completions", Reply(200, body, {"content-type": "text/event-stream"})
    )
    errors = RECORDING_GUARD.errors
    with rollout() as run:
        stream = client(fault_server).chat.completions.create(model="m", messages=USER, stream=True)
        texts = [c.choices[0].delta.content for c in stream]
    assert texts == ["x", "y"]  # the framework gets every chunk
    assert run.trajectory.model_turns() == 0  # no turn with tokens missing: none at all
    assert RECORDING_GUARD.errors == errors + 1


def test_a_reply_is_converted_when_the_trajectory_is_built_and_a_failure_leaves_it_out(
    fault_server, monkeypatch
):
    fault_server.on("POST", "/chat/completions", Reply(200, completion(EXACT)))
    real, converted = capture.parse_completion, []

    def failing_second(result):
        converted.append(result)
        if len(converted) == 2:
            raise RuntimeError("conversion failed")
        return real(result)

    monkeypatch.setattr(capture, "parse_completion", failing_second)
    errors = RECORDING_GUARD.errors
    oai = client(fault_server)
    with rollout() as run:
        oai.chat.completions.create(model="m", messages=USER)
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "other"}])
        assert converted == []  # the calls paid for a reference, not a conversion
    assert len(run.trajectory.choices()) == 1 and len(converted) == 2
    assert RECORDING_GUARD.errors == errors + 1
