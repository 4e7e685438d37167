"""Agents traced by Weave's own integrations, not by this package: run as a script (its own
process, so the patching stays out of the test session) against a local backend and a loopback
trace server.

    python weave_traced_agents.py TRACE_URL BASE_URL API_KEY
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny in {city}."


def main(trace_url: str, base_url: str, api_key: str) -> None:
    import weave

    from support.weave_fake import http_weave_client

    client = http_weave_client(trace_url)
    weave.integrations.patch_openai()
    weave.integrations.patch_langchain()
    weave.integrations.patch_llamaindex()

    # a LangGraph ReAct loop on LangChain's ChatOpenAI: the first turn must call the tool (the
    # small model answers from memory otherwise), the next ones choose
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    tools = [tool(get_weather)]
    llm = ChatOpenAI(
        model="default", base_url=base_url, api_key=api_key, temperature=0, max_tokens=48
    )
    forced, free = llm.bind_tools(tools, tool_choice="get_weather"), llm.bind_tools(tools)

    def model(state: MessagesState) -> dict:
        first = not any(m.type == "tool" for m in state["messages"])
        return {"messages": [(forced if first else free).invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", model)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    graph.compile().invoke(
        {"messages": [HumanMessage("Use get_weather to tell me the weather in Paris.")]},
        {"recursion_limit": 6},
    )

    # LlamaIndex's FunctionAgent on OpenAILike, not streamed
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.openai_like import OpenAILike

    li = OpenAILike(
        model="default",
        api_base=base_url,
        api_key=api_key,
        is_chat_model=True,
        is_function_calling_model=True,
        temperature=0,
        max_tokens=48,
    )
    function_agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(fn=get_weather)],
        llm=li,
        streaming=False,
        initial_tool_choice="get_weather",
    )

    async def ask() -> None:
        await function_agent.run("What is the weather in Rome?", max_iterations=4)

    asyncio.run(ask())

    # plain openai, asking for the exact tokens (RL-ready), twice on one prompt (one group)
    import openai

    oai = openai.OpenAI(base_url=base_url, api_key=api_key)
    for seed in (1, 2):
        oai.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8,
            temperature=1.0,
            seed=seed,
            logprobs=True,
            extra_body={"return_token_ids": True},
        )
    client.flush()


if __name__ == "__main__":
    main(*sys.argv[1:4])
