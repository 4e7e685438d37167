"""LangChain's ChatOpenAI and LlamaIndex's OpenAILike, unchanged, against the local backend."""

from __future__ import annotations

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike
from pydantic import BaseModel, Field


class Capital(BaseModel):
    """The capital of a country."""

    country: str = Field(description="the country")
    capital: str = Field(description="its capital city")


@tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"sunny in {city}"


def chat_openai(backend, **kw) -> ChatOpenAI:
    return ChatOpenAI(
        **{
            "model": "default",
            "base_url": backend.base_url,
            "api_key": backend.api_key,
            "temperature": 0,
            "max_tokens": 32,
            **kw,
        }
    )


def test_chat_openai_invoke_and_stream(backend):
    llm = chat_openai(backend)
    message = llm.invoke("What is the capital of France?")
    assert "Paris" in message.content
    assert message.usage_metadata["output_tokens"] > 0
    streamed = "".join(chunk.content for chunk in llm.stream("What is the capital of France?"))
    assert streamed == message.content


def test_chat_openai_forced_tool_call(backend):
    llm = chat_openai(backend, max_retries=0).bind_tools([get_weather], tool_choice="get_weather")
    (call,) = llm.invoke("What's the weather in Paris?").tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)


def test_chat_openai_structured_output_json_schema(backend):
    llm = chat_openai(backend, max_tokens=60).with_structured_output(Capital, method="json_schema")
    result = llm.invoke("What is the capital of France?")
    assert isinstance(result, Capital)


def test_openai_like_chat_and_stream_chat(backend):
    llm = OpenAILike(
        model="default",
        api_base=backend.base_url,
        api_key=backend.api_key,
        is_chat_model=True,
        temperature=0,
        max_tokens=32,
    )
    messages = [ChatMessage(role="user", content="What is the capital of France?")]
    response = llm.chat(messages)
    assert "Paris" in response.message.content
    *_, last = llm.stream_chat(messages)
    assert last.message.content == response.message.content
