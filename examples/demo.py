"""The main demo, as far as the project goes today (see README "Status"):

starts the local backend with the real SmolLM2 model, runs a LangGraph agent with ChatWandb
against it, forces a tool call, and shows the exact token ids and logprobs the recorder will
train on. The rollout -> RL step -> new checkpoint part lands with the training issues.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

from langchain_wandb import ChatWandb
from wandb_serverless.local import LocalBackend

MODEL_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "models"


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny and 21 degrees in {city}."


def main() -> None:
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as data_dir,
        LocalBackend.start(data_dir=data_dir, model_cache_dir=MODEL_CACHE) as backend,
    ):
        print(
            f"local backend: {backend.base_url} serving {backend.model_id} "
            f"({time.monotonic() - started:.1f}s to start)"
        )
        llm = ChatWandb(
            model="default",
            base_url=backend.base_url,
            api_key=backend.api_key,
            temperature=0,
            max_tokens=48,
            return_token_ids=True,
            logprobs=True,
        )

        answer = llm.invoke("What is the capital of France?")
        meta = answer.response_metadata
        print(f"\ninvoke: {answer.content!r}")
        print(
            f"  {len(meta['token_ids'])} completion tokens, ids {meta['token_ids'][:8]}..., "
            f"logprob of first token {meta['logprobs']['content'][0]['logprob']:.3f}"
        )

        forced = llm.bind_tools([get_weather], tool_choice="get_weather")
        call = forced.invoke("What's the weather like in Lisbon?").tool_calls[0]
        print(f"\nforced tool call (grammar-constrained): {call['name']}({call['args']})")

        agent = create_agent(llm, tools=[get_weather])
        result = agent.invoke({"messages": [HumanMessage("Tell me about the weather in Paris.")]})
        print(f"\nLangGraph agent final answer: {result['messages'][-1].content!r}")
    print(f"\ndone in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
