"""A conformance suite for WandbLLM mirroring langchain-tests' names (LlamaIndex has none),
run against the local backend serving the real SmolLM2 model."""

from __future__ import annotations

import itertools
import json

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.wandb import WandbLLM
from pydantic import BaseModel

ASK = [ChatMessage(role="user", content="What is the capital of France?")]


class Capital(BaseModel):
    country: str
    capital: str


def magic_function(input: int) -> int:
    """Apply a magic function to an input."""
    return input + 2


def no_args() -> str:
    """Return the current status."""
    return "all good"


def echo(text: str) -> str:
    """Echo the text back."""
    return text


@pytest.fixture
def llm(backend) -> WandbLLM:
    return WandbLLM(
        model="default",
        api_base=backend.base_url,
        api_key=backend.api_key,
        temperature=0,
        max_tokens=48,
    )


@pytest.mark.parametrize("role", ["", "  "])
def test_an_empty_role_is_refused_as_the_role_block_refuses_it(role):
    with pytest.raises(ValueError, match="a role name must be a non-empty string"):
        WandbLLM(model="m", base_url="http://127.0.0.1:9/v1", api_key="k", role=role)
    assert WandbLLM(model="m", base_url="http://127.0.0.1:9/v1", api_key="k", role="p").role == "p"


def test_invoke(llm):
    response = llm.chat(ASK)
    assert response.message.role == MessageRole.ASSISTANT and "Paris" in response.message.content


async def test_ainvoke(llm):
    assert "Paris" in (await llm.achat(ASK)).message.content


def test_stream_yields_cumulative_snapshots_and_deltas(llm):
    responses = list(llm.stream_chat(ASK))
    final = llm.chat(ASK).message.content
    assert responses[-1].message.content == final
    assert "".join(r.delta or "" for r in responses) == final
    contents = [r.message.content or "" for r in responses]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(contents))


async def test_astream(llm):
    responses = [r async for r in await llm.astream_chat(ASK)]
    assert "Paris" in responses[-1].message.content


def test_complete_and_stream_complete(llm):
    assert "Paris" in llm.complete("What is the capital of France?").text
    *_, last = llm.stream_complete("What is the capital of France?")
    assert "Paris" in last.text


async def test_acomplete(llm):
    assert "Paris" in (await llm.acomplete("What is the capital of France?")).text


def test_usage_metadata(llm):
    response = llm.chat(ASK)
    usage = response.raw["usage"]
    assert response.additional_kwargs["prompt_tokens"] == usage["prompt_tokens"] > 0
    assert response.additional_kwargs["completion_tokens"] == usage["completion_tokens"] > 0
    *_, last = llm.stream_chat(ASK, stream_options={"include_usage": True})
    assert last.additional_kwargs["completion_tokens"] == usage["completion_tokens"]


def test_stop_sequence(llm):
    response = llm.chat(ASK, stop=[" Paris"])
    assert "Paris" not in response.message.content and response.message.content


def test_logprobs_and_token_ids_for_trace_hooks(backend, tokenizer):
    llm = WandbLLM(
        model="default",
        api_base=backend.base_url,
        api_key=backend.api_key,
        temperature=0,
        max_tokens=24,
        logprobs=True,
        top_logprobs=2,
        return_token_ids=True,
    )
    response = llm.chat(ASK)
    ids = response.additional_kwargs["token_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == response.message.content
    assert len(response.logprobs) == len(ids) and all(len(alts) >= 2 for alts in response.logprobs)
    assert response.raw["prompt_token_ids"] == response.additional_kwargs["prompt_token_ids"]


def test_metadata_reports_real_capabilities(llm):
    meta = llm.metadata
    assert meta.is_function_calling_model and meta.is_chat_model
    assert meta.context_window == 8192 and meta.num_output == 48


def test_forced_tool_call(llm):
    tool = FunctionTool.from_defaults(fn=magic_function)
    response = llm.chat_with_tools(
        [tool], user_msg="What is the value of magic_function(3)? Use the tool.", tool_required=True
    )
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection.tool_name == "magic_function" and isinstance(
        selection.tool_kwargs["input"], int
    )
    assert selection.tool_id


def test_tool_calling_with_no_arguments(llm):
    tool = FunctionTool.from_defaults(fn=no_args)
    response = llm.chat_with_tools([tool], user_msg="What is the status?", tool_required=True)
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection.tool_name == "no_args" and selection.tool_kwargs == {}


def test_unicode_tool_call_arguments(llm, backend):
    tool = FunctionTool.from_defaults(fn=echo)
    llm.additional_kwargs = {"extra_body": {"structured_outputs": None}}
    response = llm.chat_with_tools([tool], user_msg="Echo 你好", tool_required=True)
    (selection,) = llm.get_tool_calls_from_response(response)
    raw_args = response.raw["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(selection.tool_kwargs["text"], str) and "\\u" not in raw_args


def test_tool_message_history_round_trip(llm, fault_server):
    history = [
        ChatMessage(role="user", content="What is magic_function(3)?"),
        ChatMessage(
            role="assistant",
            blocks=[
                ToolCallBlock(
                    tool_call_id="call_1", tool_name="magic_function", tool_kwargs={"input": 3}
                )
            ],
        ),
        ChatMessage(role="tool", content="5", additional_kwargs={"tool_call_id": "call_1"}),
    ]
    assert llm.chat(history).message.content
    from support.fault_server import Reply

    fault_server.on(
        "POST",
        "/chat/completions",
        Reply(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "5"},
                        "finish_reason": "stop",
                    }
                ],
            },
        ),
    )
    WandbLLM(model="m", api_base=fault_server.url, api_key="k").chat(history)
    sent = fault_server.calls("POST", "/chat/completions")[0].body["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {
        "name": "magic_function",
        "arguments": json.dumps({"input": 3}),
    }
    assert sent[1]["content"] is None and sent[2] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "5",
    }


def test_partial_json_tool_arguments_do_not_raise(llm):
    from llama_index.core.base.llms.types import ChatResponse

    partial = ChatResponse(
        message=ChatMessage(
            role="assistant",
            blocks=[
                ToolCallBlock(
                    tool_call_id="c", tool_name="f", tool_kwargs='{"input": 3, "other": "ab'
                )
            ],
        )
    )
    (selection,) = llm.get_tool_calls_from_response(partial, error_on_no_tool_call=False)
    assert selection.tool_kwargs["input"] == 3
    empty = ChatResponse(message=ChatMessage(role="assistant", content="no call"))
    assert llm.get_tool_calls_from_response(empty, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="Expected at least one tool call"):
        llm.get_tool_calls_from_response(empty)


def test_structured_output_pydantic(llm):
    result = llm.structured_predict(
        Capital, PromptTemplate("What is the capital of {country}?"), country="France"
    )
    assert isinstance(result, Capital)


async def test_structured_output_async(llm):
    result = await llm.astructured_predict(
        Capital, PromptTemplate("What is the capital of {country}?"), country="France"
    )
    assert isinstance(result, Capital)


def test_structured_output_streaming(llm):
    objects = list(
        llm.stream_structured_predict(
            Capital, PromptTemplate("What is the capital of {country}?"), country="France"
        )
    )
    assert objects and isinstance(objects[-1], Capital)


def test_structured_output_falls_back_to_a_forced_tool_call(backend):
    llm = WandbLLM(
        model="default",
        api_base=backend.base_url,
        api_key=backend.api_key,
        temperature=0,
        max_tokens=48,
        structured_output_method="function_calling",
    )
    assert isinstance(
        llm.structured_predict(Capital, PromptTemplate("Capital of {country}?"), country="France"),
        Capital,
    )


def test_as_structured_llm(llm):
    structured = llm.as_structured_llm(Capital)
    response = structured.chat([ChatMessage(role="user", content="What is the capital of France?")])
    assert isinstance(response.raw, Capital)


def test_the_key_never_shows(backend):
    llm = WandbLLM(model="default", api_base=backend.base_url, api_key="sk-very-secret-123")
    assert "sk-very-secret-123" not in repr(llm) and "sk-very-secret-123" not in str(llm.to_dict())
