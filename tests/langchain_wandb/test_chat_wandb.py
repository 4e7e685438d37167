"""ChatWandb behaviour beyond the standard suite: wire payloads, reasoning, token ids, errors."""

from __future__ import annotations

import json
import logging

import openai
import pytest
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelRateLimitError,
)
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from support.fault_server import Reply

from langchain_wandb import ChatWandb

KEY = "wb-secret-key-0123456789"


def completion(message: dict, **extra) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "served-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        **extra,
    }


def sse(*chunks: dict) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def fake(fault_server, **kw) -> ChatWandb:
    return ChatWandb(model="m", base_url=fault_server.url, api_key=KEY, max_retries=0, **kw)


def test_payload_maps_max_tokens_vllm_extras_and_tool_choice(fault_server):
    fault_server.on("POST", "/chat/completions", Reply(200, completion({"content": "ok"})))

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    llm = fake(
        fault_server,
        max_tokens=7,
        top_k=5,
        min_p=0.1,
        return_token_ids=True,
        extra_body={"cache_salt": "s"},
    )
    llm.bind_tools([add], tool_choice="any").invoke("hi", model="override")
    body = fault_server.calls("POST", "/chat/completions")[0].body
    assert (
        body["model"] == "override"
        and body["max_completion_tokens"] == 7
        and "max_tokens" not in body
    )
    assert (body["top_k"], body["min_p"], body["return_token_ids"], body["cache_salt"]) == (
        5,
        0.1,
        True,
        "s",
    )
    assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert body["tools"][0]["function"]["name"] == "add"
    assert not any(key.startswith("guided_") for key in body)


def test_project_header_is_sent_and_openai_env_does_not_leak(fault_server, monkeypatch):
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-leak")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-leak")
    fault_server.on("POST", "/chat/completions", Reply(200, completion({"content": "ok"})))
    fake(fault_server, project="me/agents").invoke("hi")
    headers = fault_server.calls("POST", "/chat/completions")[0].headers
    assert headers["openai-project"] == "me/agents" and "openai-organization" not in headers


@pytest.mark.parametrize("role", ["", "  "])
def test_an_empty_role_is_refused_as_the_role_block_refuses_it(role):
    with pytest.raises(ValueError, match="a role name must be a non-empty string"):
        ChatWandb(model="m", base_url="http://127.0.0.1:9/v1", api_key=KEY, role=role)
    assert ChatWandb(model="m", base_url="http://127.0.0.1:9/v1", api_key=KEY).role is None


def test_checkpoint_reference_is_sent_as_the_model(fault_server):
    fault_server.on("POST", "/chat/completions", Reply(200, completion({"content": "ok"})))
    ref = "wandb-artifact:///me/agents/sql-agent:step3"
    ChatWandb(model=ref, base_url=fault_server.url, api_key=KEY).invoke("hi")
    assert fault_server.calls("POST", "/chat/completions")[0].body["model"] == ref


def test_reasoning_is_read_from_either_field(fault_server):
    fault_server.on(
        "POST",
        "/chat/completions",
        Reply(200, completion({"content": "4", "reasoning": "2+2=4"})),
        Reply(200, completion({"content": "4", "reasoning_content": "two and two"})),
    )
    first, second = fake(fault_server).invoke("2+2?"), fake(fault_server).invoke("2+2?")
    assert first.additional_kwargs["reasoning_content"] == "2+2=4"
    assert second.additional_kwargs["reasoning_content"] == "two and two"
    assert any(block["type"] == "reasoning" for block in first.content_blocks)


def test_malformed_tool_arguments_become_invalid_tool_calls(fault_server):
    calls = [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{not json"}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": ""}},
    ]
    fault_server.on(
        "POST", "/chat/completions", Reply(200, completion({"content": None, "tool_calls": calls}))
    )
    message = fake(fault_server).invoke("hi")
    assert message.tool_calls == [{"name": "g", "args": {}, "id": "b", "type": "tool_call"}]
    assert (
        message.invalid_tool_calls[0]["name"] == "f"
        and "JSON" in message.invalid_tool_calls[0]["error"]
    )


def test_streamed_tool_calls_without_index_still_assemble(fault_server, monkeypatch):
    def chunk(delta, finish=None):
        return {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "served",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    body = sse(
        chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"x": '},
                    }
                ],
            }
        ),
        chunk({"tool_calls": [{"function": {"arguments": '"你好"}'}}]}),
        chunk({}, "tool_calls"),
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "served",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        },
    )
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        llm = ChatWandb(
            model="m", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key=KEY
        )
        chunks = list(llm.stream("hi"))
    finally:
        server.shutdown()
    total = sum(chunks[1:], chunks[0])
    assert isinstance(total, AIMessageChunk)
    assert total.tool_calls == [
        {"name": "f", "args": {"x": "你好"}, "id": "call_1", "type": "tool_call"}
    ]
    assert total.usage_metadata["input_tokens"] == 3
    assert sum(1 for c in chunks if c.usage_metadata and c.usage_metadata["input_tokens"]) == 1


def test_errors_map_to_langchain_and_openai_types(fault_server):
    fault_server.on(
        "POST",
        "/chat/completions",
        Reply(429, {"detail": "Concurrency limit reached"}),
        Reply(400, {"detail": "This model's maximum context length is 8192 tokens."}),
    )
    with pytest.raises(ModelRateLimitError) as rate:
        fake(fault_server).invoke("hi")
    assert isinstance(rate.value, openai.RateLimitError)
    with pytest.raises(ContextOverflowError):
        fake(fault_server).invoke("hi")


def test_the_key_never_shows_in_repr_str_logs_or_errors(fault_server, caplog):
    fault_server.on("POST", "/chat/completions", Reply(401, {"detail": "Authentication failed"}))
    llm = fake(fault_server)
    with caplog.at_level(logging.DEBUG), pytest.raises(Exception) as err:
        llm.invoke("hi")
    for text in (repr(llm), str(llm), str(llm.model_dump()), caplog.text, str(err.value)):
        assert KEY not in text


# -- against the local backend -----------------------------------------------------------


def local(backend, **kw) -> ChatWandb:
    return ChatWandb(
        **{
            "model": "default",
            "base_url": backend.base_url,
            "api_key": backend.api_key,
            "temperature": 0,
            "max_tokens": 32,
            **kw,
        }
    )


def test_errors_of_the_local_backend_map_as_w_and_b_ones(backend):
    """The backend answers as vLLM (W&B): a request that fails validation is a 400, so it maps
    to ModelInvalidRequestError (and openai.BadRequestError) here as in production."""
    with pytest.raises(ModelInvalidRequestError) as invalid:
        local(backend, logprobs=True, top_logprobs=21).invoke("hi")
    assert isinstance(invalid.value, openai.BadRequestError) and "top_logprobs" in str(
        invalid.value
    )
    with pytest.raises(ModelInvalidRequestError, match="logit_bias"):
        local(backend, logit_bias={10**8: 1}).invoke("hi")
    with pytest.raises(ContextOverflowError):
        local(backend).invoke("word " * 9000)
    with pytest.raises(ModelNotFoundError):
        local(backend, model="no/such-model").invoke("hi")


def test_token_ids_reach_response_metadata_and_decode_to_the_text(backend, tokenizer):
    message = local(backend, return_token_ids=True, logprobs=True).invoke(
        "What is the capital of France?"
    )
    metadata = message.response_metadata
    assert tokenizer.decode(metadata["token_ids"], skip_special_tokens=True) == message.content
    assert len(metadata["logprobs"]["content"]) == len(metadata["token_ids"])
    assert metadata["prompt_token_ids"] and metadata["model_name"] == "default"


def test_streaming_keeps_token_ids_and_usage(backend):
    chunks = list(local(backend, return_token_ids=True).stream("What is the capital of France?"))
    total = sum(chunks[1:], chunks[0])
    assert "Paris" in total.content
    assert total.usage_metadata["output_tokens"] == len(total.response_metadata["token_ids"])
    assert chunks[-1].chunk_position == "last"


def test_langgraph_agent_with_two_tools_reaches_a_final_answer(backend):
    from langgraph.prebuilt import create_react_agent

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        return f"It is sunny in {city}."

    @tool
    def get_time(city: str) -> str:
        """Get the local time in a city."""
        return "It is noon."

    agent = create_react_agent(local(backend, max_tokens=48), [get_weather, get_time])
    result = agent.invoke(
        {"messages": [HumanMessage("Use get_weather to tell me the weather in Paris.")]},
        {"recursion_limit": 6},
    )
    final = result["messages"][-1]
    assert final.type == "ai" and final.content and not final.tool_calls


# -- what a rollout records at the edges (issue 28) -------------------------------------------


def _chunk(delta: dict, finish: str | None = None, **extra) -> dict:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "served",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}],
    }


def test_a_streamed_structured_output_cut_by_length_is_recorded_before_it_raises(fault_server):
    """As the non-streamed path does: the turn is in the rollout, then the clear error."""
    from wandb_serverless.chat.protocol import LengthLimitError
    from wandb_serverless.rollouts import rollout

    def logprobs(*tokens: str) -> dict:
        return {"content": [{"token": t, "logprob": -0.5, "top_logprobs": []} for t in tokens]}

    body = sse(
        _chunk(
            {"role": "assistant", "content": '{"answer": "fo'},
            token_ids=[5, 6],
            logprobs=logprobs('{"answer": "', "fo"),
        ),
        _chunk({"content": "o"}, "length", token_ids=[7], logprobs=logprobs("o")),
    )
    fault_server.on(
        "POST", "/chat/completions", Reply(200, body, {"content-type": "text/event-stream"})
    )
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    llm = fake(fault_server, streaming=True, max_tokens=3).bind(
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    )
    with rollout() as run, pytest.raises(LengthLimitError):
        for _ in llm.stream("answer in JSON"):
            pass
    (call,) = run.calls
    assert call.choice["finish_reason"] == "length"
    assert call.choice["message"]["content"] == '{"answer": "foo'
    assert call.choice["token_ids"] == [5, 6, 7]


def test_n_choices_in_a_rollout_record_the_first_and_count_the_rest(fault_server, caplog):
    from wandb_serverless.rollouts import rollout

    reply = completion({"content": "first"})
    reply["choices"].append(
        {"index": 1, "message": {"role": "assistant", "content": "second"}, "finish_reason": "stop"}
    )
    fault_server.on("POST", "/chat/completions", Reply(200, reply))
    llm = fake(fault_server, n=2)
    with caplog.at_level(logging.WARNING), rollout() as run:
        llm.invoke("hi")
        llm.invoke("hi again")
    assert [c.choice["content"] for c in run.calls] == ["first", "first"]
    assert run.trajectory.metadata["unrecorded_choices"] == 2
    warned = [r for r in caplog.records if "n > 1" in r.getMessage()]
    assert len(warned) == 1  # once per rollout, not per call
