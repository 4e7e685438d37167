"""Token counts by the served tokenizer, output the length limit cut off, and errors that say
where: what a newcomer meets in the first hour (issue 17, items 1-3)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from langchain.agents import create_agent
from langchain.agents.structured_output import ToolStrategy
from langchain_core.exceptions import ModelConnectionError
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.errors import GraphRecursionError
from pydantic import BaseModel
from support.fixtures import MODEL_CACHE

from langchain_wandb import ChatWandb
from wandb_serverless import tokens


class Weather(BaseModel):
    """A weather report."""

    city: str
    temperature_celsius: float
    summary: str


@tool
def get_weather(city: str) -> str:
    """The current weather of a city."""
    return f"Sunny in {city}"


def local(backend, **kw) -> ChatWandb:
    return ChatWandb(
        model="default", base_url=backend.base_url, api_key=backend.api_key, temperature=0, **kw
    )


# -- token counts ---------------------------------------------------------------------------


def test_get_num_tokens_is_the_served_tokenizer_at_once(backend, tokenizer):
    llm = local(backend)
    text = "The quick brown fox jumps over the lazy dog, twice."
    started = time.monotonic()
    count = llm.get_num_tokens(text)
    assert time.monotonic() - started < 1.0  # no tokenizer download, no 4-minute hang
    assert count == len(tokenizer(text, add_special_tokens=False).input_ids) > 0
    assert llm.get_token_ids(text) == tokenizer(text, add_special_tokens=False).input_ids


def test_message_count_is_the_prompt_the_server_builds(backend):
    llm = local(backend, max_tokens=2)
    messages = [SystemMessage("Be brief."), HumanMessage("What is the weather in Oslo?")]
    assert (
        llm.get_num_tokens_from_messages(messages)
        == (llm.invoke(messages).usage_metadata["input_tokens"])
    )
    with_tools = llm.get_num_tokens_from_messages(messages, tools=[get_weather])
    assert (
        with_tools == llm.bind_tools([get_weather]).invoke(messages).usage_metadata["input_tokens"]
    )
    assert with_tools > llm.get_num_tokens_from_messages(messages)  # the tools are in the prompt


def test_a_server_without_tokenize_falls_back_to_a_tokenizer_on_disk(fault_server, tokenizer):
    """W&B (or any server) without /tokenize: a model whose tokenizer is on this machine is
    counted locally; one whose is not is a clear error at once, never 0 and never a download."""
    model_dir = str(next(MODEL_CACHE.iterdir()))
    on_disk = ChatWandb(model=model_dir, base_url=fault_server.url, api_key="k", max_retries=0)
    assert on_disk.get_num_tokens("hello world") == len(
        tokenizer("hello world", add_special_tokens=False).input_ids
    )
    unknown = ChatWandb(model="acme/not-cached-7b", base_url=fault_server.url, api_key="k")
    started = time.monotonic()
    with pytest.raises(tokens.TokenizerUnavailableError, match="none is downloaded"):
        unknown.get_num_tokens("hello world")
    assert time.monotonic() - started < 5
    assert [r.path for r in fault_server.requests].count("/tokenize") == 1  # asked once


def test_custom_get_token_ids_still_wins(backend):
    llm = local(backend, custom_get_token_ids=lambda text: [1, 2, 3])
    assert llm.get_num_tokens("anything at all") == 3


# -- output cut off by the length limit -----------------------------------------------------


def test_a_forced_tool_call_cut_off_is_an_invalid_tool_call_not_content(backend):
    reply = (
        local(backend, max_tokens=12)
        .bind_tools([Weather], tool_choice="Weather")
        .invoke("Weather in Paris?")
    )
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.content == "" and "<tool_call>" not in str(reply.content)
    assert reply.tool_calls == []
    [invalid] = reply.invalid_tool_calls
    assert invalid["name"] == "Weather" and "length limit" in invalid["error"]


def test_a_forced_tool_call_cut_off_on_the_raw_wire(oai):
    """What any OpenAI client sees: a tool call with partial arguments, finish_reason length."""
    reply = oai.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "Weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}, "summary": {"type": "string"}},
                        "required": ["city", "summary"],
                    },
                },
            }
        ],
        tool_choice="required",
        max_tokens=14,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and not choice.message.content
    [call] = choice.message.tool_calls
    assert call.function.name == "Weather"
    with pytest.raises(ValueError):
        __import__("json").loads(call.function.arguments)


def test_a_streamed_forced_call_cut_off_is_still_a_call(backend):
    chunks = list(
        local(backend, max_tokens=12).bind_tools([Weather], tool_choice="Weather").stream("Paris?")
    )
    merged = sum(chunks[1:], chunks[0])
    assert "<tool_call>" not in str(merged.content)
    assert [c["name"] for c in merged.tool_call_chunks] == ["Weather"]


def test_structured_output_cut_off_names_the_length_limit(backend):
    llm = local(backend, max_tokens=6)
    with pytest.raises(openai.LengthFinishReasonError, match=r"length limit.*max_tokens=6"):
        llm.with_structured_output(Weather).invoke("Weather in Paris?")
    vllm_style = local(
        backend, max_tokens=6, structured_outputs={"json": Weather.model_json_schema()}
    )
    with pytest.raises(openai.LengthFinishReasonError, match="max_tokens=6"):
        vllm_style.invoke("Weather in Paris?")
    with pytest.raises(openai.LengthFinishReasonError):
        list(llm.with_structured_output(Weather).stream("Weather in Paris?"))


def test_tool_strategy_agent_sees_the_cut_off_call(backend):
    """create_agent(response_format=ToolStrategy(...)): the cut-off call reaches the agent as an
    invalid tool call with its reason, and the agent answers it with an error message and asks
    again (before: the markup landed in content and the run ended with no structured response
    and no error)."""
    llm = local(backend, max_tokens=10)
    agent = create_agent(llm, tools=[], response_format=ToolStrategy(Weather))
    seen = []
    with pytest.raises(GraphRecursionError):  # cut off every time: the limit ends it
        for update in agent.stream(
            {"messages": [("user", "Weather in Paris?")]},
            {"recursion_limit": 3},
            stream_mode="updates",
        ):
            for change in update.values():
                seen += (change or {}).get("messages", [])
    ai = seen[0]
    assert ai.type == "ai" and ai.tool_calls == [] and "<tool_call>" not in str(ai.content)
    assert ai.invalid_tool_calls[0]["name"] == "Weather"
    assert "length limit" in ai.invalid_tool_calls[0]["error"]
    answers = [m for m in seen if m.type == "tool"]
    assert answers and answers[0].tool_call_id == ai.invalid_tool_calls[0]["id"]


# -- errors that say where ------------------------------------------------------------------


def test_connection_errors_name_the_url_and_whose_it_is(monkeypatch):
    monkeypatch.delenv("WANDB_SERVERLESS_BASE_URL", raising=False)
    monkeypatch.delenv("WANDB_INFERENCE_BASE_URL", raising=False)
    stopped = ChatWandb(
        model="default", base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0
    )
    with pytest.raises(ModelConnectionError, match=r"custom base URL http://127\.0\.0\.1:9/v1"):
        stopped.invoke("hi")
    with pytest.raises(openai.APIConnectionError, match="is a server running there"):
        stopped.get_num_tokens("hi")


def test_wandb_connection_error_says_it_is_wandb_and_how_to_go_local(monkeypatch):
    """No base URL and no network: the error says it was W&B, and how to reach a local one."""
    monkeypatch.delenv("WANDB_SERVERLESS_BASE_URL", raising=False)
    monkeypatch.delenv("WANDB_INFERENCE_BASE_URL", raising=False)

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no route to host", request=request)

    llm = ChatWandb(
        model="m",
        api_key="k",
        project="team/p",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(unreachable)),
    )
    with pytest.raises(ModelConnectionError) as caught:
        llm.invoke("hi")
    assert "W&B at https://api.inference.wandb.ai/v1" in str(caught.value)
    assert "WANDB_SERVERLESS_BASE_URL" in str(caught.value)


def test_an_unknown_model_404_lists_the_served_models(backend):
    llm = ChatWandb(model="gpt-4o", base_url=backend.base_url, api_key=backend.api_key)
    with pytest.raises(openai.NotFoundError, match="This server serves: default, HuggingFaceTB"):
        llm.invoke("hi")
