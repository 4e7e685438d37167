"""The client's protocol, pure: requests built from adapter parameters, responses and stream
chunks parsed into turns (what both adapters rely on), with no server."""

from __future__ import annotations

import pytest

from wandb_serverless import calls
from wandb_serverless.chat import (
    StreamAccumulator,
    build_request,
    parse_arguments,
    parse_completion,
)
from wandb_serverless.rollouts import rollout

USER = [{"role": "user", "content": "hi"}]


def test_build_request_routes_standard_and_vllm_parameters():
    request = build_request(
        model="m",
        messages=USER,
        params={"max_tokens": 5, "temperature": 0.5, "top_k": 3, "min_p": 0.1, "seed": None,
                "extra_body": {"repetition_penalty": 1.1}},
        stream=True,
    )  # fmt: skip
    assert request["max_completion_tokens"] == 5 and "max_tokens" not in request
    assert request["temperature"] == 0.5 and "seed" not in request  # None is not sent
    assert request["extra_body"] == {"repetition_penalty": 1.1, "top_k": 3, "min_p": 0.1}
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}


def test_inside_a_rollout_the_request_asks_for_exact_tokens_unless_told_not_to():
    assert "logprobs" not in calls.request(model="m", messages=USER, params={})
    with rollout():
        asked = calls.request(model="m", messages=USER, params={})
        declined = calls.request(model="m", messages=USER, params={"logprobs": False})
        assert "logprobs" not in build_request(model="m", messages=USER, params={})  # pure
    assert asked["logprobs"] is True and asked["extra_body"]["return_token_ids"] is True
    assert declined["logprobs"] is False


def test_removed_vllm_parameters_are_an_error_not_silence():
    with pytest.raises(ValueError, match="removed from vLLM"):
        build_request(model="m", messages=USER, params={"guided_json": {}})


def test_parse_completion_keeps_tool_calls_tokens_and_usage():
    response = {
        "id": "r1",
        "model": "m",
        "prompt_token_ids": [1, 2],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "token_ids": [7, 8, 9],
                "logprobs": {"content": [{"token": "a", "logprob": -0.1}]},
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "think",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
                    ],
                },
            }
        ],
    }  # fmt: skip
    (turn,) = parse_completion(response)
    assert turn.content == "" and turn.reasoning == "think"
    assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == [("c1", "f", '{"x":1}')]
    assert turn.metadata["token_ids"] == [7, 8, 9] and turn.metadata["prompt_token_ids"] == [1, 2]
    assert turn.usage.output_tokens == 3 and turn.finish_reason == "tool_calls"


def chunk(delta, finish=None, **extra):
    return {"id": "r", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}  # fmt: skip


def test_stream_accumulator_merges_tool_call_fragments_by_index_and_tokens():
    stream = StreamAccumulator()
    for part in [
        chunk({"role": "assistant", "content": "Let me"}, token_ids=[1], logprobs={"content": [{"token": "Let", "logprob": -1.0}]}),
        chunk({"content": " check."}, token_ids=[2]),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"P"}'}}]}, finish="tool_calls"),
        {"id": "r", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}},
    ]:  # fmt: skip
        stream.add(part)
    message = stream.message()
    assert message["content"] == "Let me check."
    assert [(c["id"], c["function"]["arguments"]) for c in message["tool_calls"]] == [
        ("c1", '{"city":"P"}'),
        ("c2", "{}"),
    ]
    assert stream.token_ids == [1, 2] and len(stream.logprobs) == 1
    assert stream.finish_reason == "tool_calls" and stream.usage.total_tokens == 10


def test_stream_without_indices_keeps_calls_apart_by_id():
    stream = StreamAccumulator()
    stream.add(chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{"}}]}))
    stream.add(chunk({"tool_calls": [{"function": {"arguments": "}"}}]}))
    stream.add(chunk({"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "{}"}}]}))
    assert [(c.name, c.arguments) for c in stream.tool_calls()] == [("f", "{}"), ("g", "{}")]


def test_parse_arguments_says_what_is_wrong():
    assert parse_arguments('{"a": 1}') == ({"a": 1}, None)
    assert parse_arguments("") == ({}, None)
    assert parse_arguments("{not json")[1].startswith("arguments are not valid JSON")
    assert parse_arguments("[1]")[1] == "arguments must be a JSON object, got list"
    value, reason = parse_arguments('{"ci', cut_off=True)
    assert value is None and "cut off by the length limit" in reason
