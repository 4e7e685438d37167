"""LlamaIndex agent runs recorded as trainable trajectories, on the local backend."""

from __future__ import annotations

import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.instrumentation.dispatcher import instrument_tags
from llama_index.core.tools import FunctionTool
from llama_index.llms.wandb import RolloutEventHandler, WandbLLM

from wandb_serverless.rollouts import Choice, rollout


def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny in {city}."


@pytest.fixture
def handler():
    handler = RolloutEventHandler().install()
    yield handler
    handler.uninstall()


def make_agent(backend, streaming: bool) -> FunctionAgent:
    llm = WandbLLM(
        model="default",
        api_base=backend.base_url,
        api_key=backend.api_key,
        temperature=0,
        max_tokens=40,
        logprobs=True,
        return_token_ids=True,
    )
    return FunctionAgent(
        tools=[FunctionTool.from_defaults(fn=get_weather)],
        llm=llm,
        streaming=streaming,
        initial_tool_choice="get_weather",
    )


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_function_agent_run_becomes_a_trainable_trajectory(
    backend, handler, tokenizer, streaming
):
    async with rollout(group="weather") as run:
        await make_agent(backend, streaming).run("What is the weather in Paris?")
    trajectory = run.trajectory
    items = trajectory.messages_and_choices
    roles = ["assistant" if isinstance(i, Choice) else i["role"] for i in items]
    assert roles[0] == "system" or roles[0] == "user"
    assert "assistant" in roles and "tool" in roles and roles[-1] == "assistant"
    assert [t["function"]["name"] for t in trajectory.tools] == ["get_weather"]
    call = next(i for i in items if isinstance(i, Choice) and i.message.tool_calls)
    assert call.message.tool_calls[0].function.name == "get_weather"
    final = items[-1]
    assert isinstance(final, Choice) and len(final.logprobs.content) == len(
        final.model_extra["token_ids"]
    )
    assert (
        tokenizer.decode(final.model_extra["token_ids"], skip_special_tokens=True)
        == final.message.content
    )
    assert trajectory.is_trainable() and handler.errors == 0


async def test_runs_grouped_by_tag_without_a_rollout_block(backend, handler):
    with instrument_tags({"rollout_id": "tagged-1"}):
        await make_agent(backend, False).run("What is the weather in Rome?")
    (trajectory,) = handler.finish()
    tool_results = [m["content"] for m in trajectory.messages() if m["role"] == "tool"]
    assert tool_results and all(r == "It is sunny in Rome." for r in tool_results)


async def test_a_watched_call_asks_for_exact_tokens_without_being_told(backend, handler):
    """Outside a rollout block the handler records the run itself; it still gets the exact
    tokens, because an observed call asks for them (as ChatWandb does under LangChain's)."""
    from llama_index.core.llms import ChatMessage

    llm = WandbLLM(model="default", api_base=backend.base_url, api_key=backend.api_key)
    with instrument_tags({"rollout_id": "tokens-1"}):
        await llm.achat([ChatMessage(role="user", content="Say hi.")], max_tokens=5)
    (trajectory,) = handler.finish()
    (turn,) = [i for i in trajectory.messages_and_choices if isinstance(i, Choice)]
    assert turn.logprobs is not None and turn.model_extra["token_ids"]
    assert turn.model_extra["prompt_token_ids"]


async def test_concurrent_identical_calls_stay_in_their_own_rollouts(backend, handler):
    """A group's rollouts send the same messages at once; the one that ends first must not
    take another's place (start and end events pair by their span)."""
    import asyncio

    from llama_index.core.llms import ChatMessage

    llm = WandbLLM(model="default", api_base=backend.base_url, api_key=backend.api_key)

    async def run(max_tokens: int):
        async with rollout() as run:
            reply = await llm.achat(
                [ChatMessage(role="user", content="Count.")], max_tokens=max_tokens
            )
        return run, reply

    results = await asyncio.gather(*(run(n) for n in (24, 2, 12, 1)))
    for run, reply in results:
        assert len(run.calls) == 1 and not run.trajectory.additional_histories
        (turn,) = [i for i in run.trajectory.messages_and_choices if isinstance(i, Choice)]
        assert turn.model_extra["token_ids"] == reply.additional_kwargs["token_ids"]
    assert handler.errors == 0


async def test_wandbllm_calls_in_a_rollout_are_recorded_without_any_handler(backend, tokenizer):
    from llama_index.core.llms import ChatMessage

    llm = WandbLLM(
        model="default", api_base=backend.base_url, api_key=backend.api_key, max_tokens=20
    )
    prompts = ["Name a color.", "Name a fruit.", "Name a city."]
    async with rollout(group="direct") as run:
        llm.chat([ChatMessage(role="user", content=prompts[0])])
        streamed = list(llm.stream_chat([ChatMessage(role="user", content=prompts[1])]))
        await llm.achat([ChatMessage(role="user", content=prompts[2])])
    histories = [run.trajectory, *run.trajectory.additional_histories]
    assert [h.messages()[0]["content"] for h in histories] == prompts
    for history in histories:
        choice = history.messages_and_choices[-1]
        ids = choice.model_extra["token_ids"]
        assert isinstance(choice, Choice) and len(choice.logprobs.content) == len(ids)
        assert tokenizer.decode(ids, skip_special_tokens=True) == choice.message.content
    assert histories[1].messages_and_choices[-1].message.content == streamed[-1].message.content
