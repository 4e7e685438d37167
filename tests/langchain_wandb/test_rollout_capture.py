"""LangChain / LangGraph runs recorded as trainable trajectories, on the local backend."""

from __future__ import annotations

import asyncio
from typing import Annotated, TypedDict

import pytest
from langchain_core.messages import AnyMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode

from langchain_wandb import ChatWandb, RolloutCallbackHandler
from wandb_serverless.rollouts import Choice, RolloutStore, TrajectoryGroup, rollout


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny in {city}."


@tool
def get_time(city: str) -> str:
    """Get the local time in a city."""
    return "It is noon."


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def build_agent(llm: ChatWandb):
    """A ReAct-style LangGraph agent. The first turn must call a tool (a 135M model does not
    choose to on its own); later turns may answer."""
    tools = [get_weather, get_time]
    first, later = llm.bind_tools(tools, tool_choice="any"), llm.bind_tools(tools)

    def agent(state: State) -> dict:
        called = any(m.type == "tool" for m in state["messages"])
        return {"messages": [(later if called else first).invoke(state["messages"])]}

    def route(state: State) -> str:
        return "tools" if state["messages"][-1].tool_calls else END

    graph = StateGraph(State)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", END])
    graph.add_edge("tools", "agent")
    return graph.compile()


@pytest.fixture
def llm(backend) -> ChatWandb:
    return ChatWandb(
        model="default",
        base_url=backend.base_url,
        api_key=backend.api_key,
        temperature=0,
        max_tokens=40,
    )


def ask(city: str) -> dict:
    return {
        "messages": [
            SystemMessage("You are a weather assistant."),
            HumanMessage(f"What is the weather in {city}?"),
        ]
    }


def test_a_langgraph_agent_run_becomes_a_trainable_trajectory(llm, tokenizer):
    handler = RolloutCallbackHandler()
    build_agent(llm).invoke(ask("Paris"), {"callbacks": [handler], "recursion_limit": 8})
    (trajectory,) = handler.trajectories
    items = trajectory.messages_and_choices
    roles = ["assistant" if isinstance(i, Choice) else i["role"] for i in items]
    assert roles[:4] == ["system", "user", "assistant", "tool"] and roles[-1] == "assistant"
    assert [t["function"]["name"] for t in trajectory.tools] == ["get_weather", "get_time"]
    first = items[2]
    assert first.message.tool_calls[0].function.name in ("get_weather", "get_time")
    assert items[3]["tool_call_id"] == first.message.tool_calls[0].id
    for choice in (i for i in items if isinstance(i, Choice)):
        ids = choice.model_extra["token_ids"]
        assert len(choice.logprobs.content) == len(ids) and choice.model_extra["prompt_token_ids"]
        if not choice.message.tool_calls:
            assert tokenizer.decode(ids, skip_special_tokens=True) == choice.message.content
    assert trajectory.is_trainable() and not trajectory.additional_histories


async def test_concurrent_rollouts_through_one_handler_stay_apart(llm, tmp_path):
    store = RolloutStore(tmp_path / "rollouts.db")
    handler = RolloutCallbackHandler().install()
    cities = ["Paris", "Rome", "Berlin", "Madrid", "Vienna", "Oslo", "Lima", "Tokyo"]
    agent = build_agent(llm)

    async def one(city: str) -> None:
        async with rollout(group="weather", metadata={"city": city}, store=store) as run:
            await agent.ainvoke(ask(city), {"recursion_limit": 8})
            run.reward = 1.0 if city in ("Paris", "Rome") else 0.0

    try:
        await asyncio.gather(*(one(c) for c in cities))
    finally:
        handler.uninstall()
    stored = store.query(group="weather")
    assert len(stored) == 8 and handler.errors == 0
    for trajectory in stored:
        question = trajectory.messages()[1]["content"]
        assert trajectory.metadata["city"] in question
        assert all(
            trajectory.metadata["city"] in str(m.get("content"))
            for m in trajectory.messages()
            if m["role"] == "tool"
        )
    (group,) = store.groups()
    assert isinstance(group, TrajectoryGroup) and group.has_signal()


def test_with_structured_output_calls_are_captured(llm):
    from pydantic import BaseModel

    class City(BaseModel):
        name: str

    handler = RolloutCallbackHandler()
    llm.with_structured_output(City).invoke("Name a city.", {"callbacks": [handler]})
    (trajectory,) = handler.trajectories
    assert trajectory.is_trainable()
    City.model_validate_json(trajectory.messages()[-1]["content"])


def test_a_hook_that_raises_does_not_change_the_agents_answer(llm, monkeypatch):
    baseline = build_agent(llm).invoke(ask("Paris"), {"recursion_limit": 8})["messages"][-1].content
    handler = RolloutCallbackHandler()

    def boom(*args, **kwargs):
        raise RuntimeError("recorder exploded")

    monkeypatch.setattr(handler, "_rollout", boom)
    answer = (
        build_agent(llm)
        .invoke(ask("Paris"), {"callbacks": [handler], "recursion_limit": 8})["messages"][-1]
        .content
    )
    assert answer == baseline and handler.errors > 0


def test_a_recorded_group_trains_on_the_local_backend(llm, backend):
    handler = RolloutCallbackHandler().install()
    try:
        trajectories = []
        for seed, reward in ((1, 1.0), (2, 0.0), (3, 0.5)):
            with rollout(group="train-me") as run:
                llm.invoke("Name a color.", seed=seed, temperature=1.0)
                run.reward = reward
            trajectories.append(run.trajectory)
    finally:
        handler.uninstall()
    group = TrajectoryGroup(trajectories=trajectories).model_dump(mode="json")
    client = backend.client()
    model = client.models.create(
        project="agents", name="from-rollouts", base_model="default", return_existing=True
    )
    before = [c.step for c in client.checkpoints.iter(model.id)]
    job = client.training_jobs.create(model_id=model.id, trajectory_groups=[group])
    events = list(client.training_jobs.events.follow(job.id, poll_interval=0.1, timeout=300))
    assert events[-1].type == "training_ended" and events[1].data["num_trainable_tokens"] > 0
    assert [c.step for c in client.checkpoints.iter(model.id)] == [*before, len(before) + 1]


def _assert_exact_tokens(choice: Choice, tokenizer) -> None:
    ids = choice.model_extra["token_ids"]
    assert len(choice.logprobs.content) == len(ids) and choice.model_extra["prompt_token_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == choice.message.content


async def test_chatwandb_calls_in_a_rollout_are_recorded_without_any_handler(llm, tokenizer):
    prompts = ["Name a color.", "Name a fruit.", "Name a city.", "Name an animal."]
    with rollout(group="direct") as run:
        llm.invoke(prompts[0])
        chunks = list(llm.stream(prompts[1]))
        await llm.ainvoke(prompts[2])
        async_chunks = [c async for c in llm.astream(prompts[3])]
    trajectory = run.trajectory
    histories = [trajectory, *trajectory.additional_histories]
    assert [h.messages()[0]["content"] for h in histories] == prompts
    choices = [h.messages_and_choices[-1] for h in histories]
    for choice in choices:
        assert isinstance(choice, Choice)
        _assert_exact_tokens(choice, tokenizer)
    assert choices[1].message.content == "".join(c.text for c in chunks)
    assert choices[3].message.content == "".join(c.text for c in async_chunks)


def test_a_handler_and_the_adapter_never_record_a_call_twice(llm):
    handler = RolloutCallbackHandler()
    with rollout(group="once") as run:
        state = build_agent(llm).invoke(
            ask("Paris"), {"callbacks": [handler], "recursion_limit": 8}
        )
    model_turns = [m for m in state["messages"] if m.type == "ai"]
    items = run.trajectory.messages_and_choices
    assert sum(isinstance(i, Choice) for i in items) == len(model_turns)
    assert not run.trajectory.additional_histories and handler.errors == 0


def test_a_failing_recorder_does_not_change_the_answer(llm, monkeypatch):
    from wandb_serverless.rollouts import recorder

    baseline = llm.invoke("Name a color.").content

    def boom(*args, **kwargs):
        raise RuntimeError("recorder exploded")

    monkeypatch.setattr(recorder, "recorded_choice", boom)  # where the adapters' turns are built
    errors = recorder.RECORDING_GUARD.errors
    with rollout(group="broken") as run:
        assert llm.invoke("Name a color.").content == baseline
    assert recorder.RECORDING_GUARD.errors == errors + 1
    assert run.trajectory.messages_and_choices == []


def test_a_long_lived_handler_forgets_finished_runs(llm):
    handler = RolloutCallbackHandler()
    agent = build_agent(llm)
    for city in ("Paris", "Rome"):
        agent.invoke(ask(city), {"callbacks": [handler], "recursion_limit": 8})
    assert len(handler.trajectories) == 2
    assert not handler._runs and not handler._parents and not handler._members


def test_a_real_agent_rollout_exports_to_weave_with_exact_tokens(llm, tokenizer):
    from support.weave_fake import FakeTraceServer, weave_client
    from weave.trace.context import weave_client_context

    from wandb_serverless.rollouts.weave_export import unpack_turn

    server = FakeTraceServer()
    client = weave_client(server)
    try:
        with rollout(group="weave", weave=client) as run:
            build_agent(llm).invoke(ask("Paris"), {"recursion_limit": 8})
            run.reward = 1.0
        client.flush()
    finally:
        weave_client_context.set_weave_client_global(None)
    (root,) = client.get_calls(filter={"trace_roots_only": True})
    chats = [
        c for c in client.get_calls(filter={"trace_ids": [root.trace_id]}) if "chat" in c.op_name
    ]
    assert len(chats) == len(run.trajectory.choices()) >= 2
    for chat in chats:
        turn = unpack_turn(dict(chat.output))  # the tokens travel as one string
        assert len(turn["logprobs"]["content"]) == len(turn["token_ids"]) > 0
    assert chats[0].inputs["tools"][0]["function"]["name"] == "get_weather"
    assert server.feedback[-1]["payload"] == {"value": 1.0}


def test_chatopenai_in_a_rollout_is_recorded_once_with_exact_tokens(backend, tokenizer):
    """LangChain's own ChatOpenAI, unchanged: its openai client is captured, and the handler
    watching the same call does not record it a second time."""
    from langchain_openai import ChatOpenAI

    plain = ChatOpenAI(
        model="default", base_url=backend.base_url, api_key=backend.api_key, max_tokens=12
    )
    handler = RolloutCallbackHandler()
    with rollout() as run:
        plain.invoke("Name a color.", {"callbacks": [handler]})
        plain.invoke("Name a fruit.", {"callbacks": [handler]})
    choices = [c for h in [run.trajectory, *run.trajectory.additional_histories]
               for c in h.choices()]  # fmt: skip
    assert len(choices) == 2 and run.trajectory.model_turns() == 2 and handler.errors == 0
    for choice in choices:
        _assert_exact_tokens(choice, tokenizer)


def test_each_turn_is_labelled_with_its_langgraph_node_and_a_node_can_be_rewarded(llm):
    handler = RolloutCallbackHandler()
    with rollout() as run:
        build_agent(llm).invoke(ask("Rome"), {"callbacks": [handler], "recursion_limit": 8})
        run.reward_step("agent", 1.0)  # the last turn the "agent" node made
        with pytest.raises(ValueError, match=r"step 'tools'.*\['agent'\]"):
            run.reward_step("tools", 1.0)  # the tool node makes no model turn
    choices = run.trajectory.choices()
    assert {c.model_extra["turn"]["step"] for c in choices} == {"agent"}
    assert choices[-1].model_extra["turn"]["reward"] == 1.0
