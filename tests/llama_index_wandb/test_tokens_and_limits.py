"""WandbLLM: the served tokenizer, and output the length limit cut off (issue 17, items 1-2)."""

from __future__ import annotations

import time

import openai
import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.wandb import WandbLLM
from pydantic import BaseModel


class Weather(BaseModel):
    city: str
    temperature_celsius: float
    summary: str


def report_weather(city: str, temperature_celsius: float, summary: str) -> str:
    """Report the weather of a city."""
    return f"{city}: {temperature_celsius} C, {summary}"


def local(backend, **kw) -> WandbLLM:
    return WandbLLM(
        model="default", base_url=backend.base_url, api_key=backend.api_key, temperature=0, **kw
    )


def test_tokenizer_is_the_served_one_at_once(backend, tokenizer):
    llm = local(backend)
    started = time.monotonic()
    ids = llm.tokenizer.encode("Hello from LlamaIndex")
    assert time.monotonic() - started < 1.0
    assert ids == tokenizer("Hello from LlamaIndex", add_special_tokens=False).input_ids
    messages = [ChatMessage(role="user", content="Hi there")]
    assert (
        llm.tokenizer.count_messages(messages)
        == (llm.chat(messages, max_tokens=1).additional_kwargs["prompt_tokens"])
    )


def test_structured_predict_cut_off_names_the_length_limit(backend):
    """Not a silent fallback to a tool call, nor "Field required": the limit, by name."""
    llm = local(backend, max_tokens=6)
    with pytest.raises(openai.LengthFinishReasonError, match="max_tokens=6"):
        llm.structured_predict(Weather, PromptTemplate("Weather in {city}?"), city="Paris")


def test_a_cut_off_tool_call_is_an_error_not_a_call_with_half_its_arguments(backend):
    llm = local(backend, max_tokens=12)
    tool = FunctionTool.from_defaults(fn=report_weather)
    response = llm.chat_with_tools([tool], user_msg="Weather in Paris?", tool_required=True)
    assert response.additional_kwargs["finish_reason"] == "length"
    assert "<tool_call>" not in (response.message.content or "")
    with pytest.raises(ValueError, match=r"report_weather.*length limit.*max_tokens=12"):
        llm.get_tool_calls_from_response(response)


async def test_function_agent_stops_with_the_reason(backend):
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(fn=report_weather)],
        llm=local(backend, max_tokens=12),
        initial_tool_choice="report_weather",
    )
    with pytest.raises(Exception, match="length limit"):
        await agent.run("Weather in Paris?")


def test_errors_of_the_local_backend_are_the_openai_errors_w_and_b_gives(backend):
    """A request that fails validation is a 400 in vLLM's shape (as on W&B): BadRequestError,
    whose message names the parameter; an unknown model is NotFoundError."""
    llm = local(backend, additional_kwargs={"logit_bias": {"not-a-token": 1}})
    with pytest.raises(openai.BadRequestError, match="logit_bias") as invalid:
        llm.chat([ChatMessage(role="user", content="hi")])
    assert invalid.value.status_code == 400 and invalid.value.body["type"] == "BadRequestError"
    unknown = WandbLLM(model="no/such-model", base_url=backend.base_url, api_key=backend.api_key)
    with pytest.raises(openai.NotFoundError):
        unknown.complete("hi")
