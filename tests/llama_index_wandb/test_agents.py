"""LlamaIndex agents and query engines running on WandbLLM against the local backend."""

from __future__ import annotations

import pytest
from llama_index.core import Document, Settings, SummaryIndex
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
from llama_index.core.tools import FunctionTool
from llama_index.llms.wandb import WandbLLM


def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny in {city}."


def get_time(city: str) -> str:
    """Get the local time in a city."""
    return "It is noon."


TOOLS = [FunctionTool.from_defaults(fn=get_weather), FunctionTool.from_defaults(fn=get_time)]


@pytest.fixture
def llm(backend) -> WandbLLM:
    return WandbLLM(
        model="default",
        api_base=backend.base_url,
        api_key=backend.api_key,
        temperature=0,
        max_tokens=48,
    )


@pytest.mark.parametrize("streaming", [False, True])
async def test_function_agent_with_two_tools_reaches_a_final_answer(llm, streaming):
    agent = FunctionAgent(
        tools=TOOLS, llm=llm, streaming=streaming, initial_tool_choice="get_weather"
    )
    handler = agent.run("What is the weather in Paris?")
    calls = []
    async for event in handler.stream_events():
        if type(event).__name__ == "ToolCallResult":
            calls.append((event.tool_name, event.tool_output.content))
    result = await handler
    assert calls[0] == ("get_weather", "It is sunny in Paris.") or calls[0][0] == "get_weather"
    assert str(result.response.content)


async def test_react_agent_reaches_a_final_answer(llm):
    agent = ReActAgent(tools=TOOLS, llm=llm)
    result = await agent.run("What is the weather in Paris?", max_iterations=4)
    assert str(result.response.content)


def test_summary_index_query_engine_answers_with_settings_llm(llm):
    previous = Settings._llm  # reading Settings.llm would resolve a default OpenAI LLM
    Settings.llm = llm
    try:
        index = SummaryIndex.from_documents(
            [
                Document(text="The Eiffel Tower stands in Paris, France."),
                Document(text="The Eiffel Tower was completed in 1889."),
                Document(text="The Eiffel Tower is 330 metres tall."),
            ]
        )
        answer = index.as_query_engine().query("Where is the Eiffel Tower?")
    finally:
        Settings._llm = previous
    assert "Paris" in str(answer)
