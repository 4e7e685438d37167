"""Runs for days, the short version of bench/bench_soak.py: trace hooks keep nothing per run
once warmed up, and the local backend's memory is bounded however many checkpoints it serves
and models it trains."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import tracemalloc
import warnings
from collections.abc import Iterator

import openai
import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.llms import ChatMessage
from llama_index.llms.wandb import RolloutEventHandler, WandbLLM
from support.fixtures import MODEL_CACHE, REPO, sampled_rollouts

from langchain_wandb import ChatWandb, RolloutCallbackHandler
from wandb_serverless import TrainableModel
from wandb_serverless.local import LocalBackend
from wandb_serverless.rollouts import RolloutStore

RUNS = 1500
KEPT = 100  # finished rollouts a handler keeps by default


@pytest.fixture(scope="module")
def instant() -> Iterator[str]:
    """bench/instant_server.py in its own process: canned replies, no model."""
    spec = importlib.util.spec_from_file_location(
        "instant_server", REPO / "bench" / "instant_server.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url, process = module.start_process()
    yield url
    process.kill()


def growth_kb(call, runs: int = RUNS) -> float:
    """Python memory still held after ``runs`` more calls, once warmed up (tracemalloc, on
    from the start: what a call frees that the warm-up allocated counts too)."""
    tracemalloc.start()
    # pytest keeps every warning raised in a test: LlamaIndex's workflows raise a deprecation
    # warning on every agent run (PydanticDeprecatedSince211), which would be counted here
    catching = warnings.catch_warnings()
    catching.__enter__()
    warnings.simplefilter("ignore")
    try:
        for _ in range(KEPT + 50):
            call()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(runs):
            call()
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / 1024
    finally:
        catching.__exit__(None, None, None)
        tracemalloc.stop()


@pytest.mark.slow
def test_a_langchain_handler_keeps_nothing_per_run_once_warmed_up(instant):
    llm = ChatWandb(model="m", base_url=instant, api_key="k")
    handler = RolloutCallbackHandler().install()
    try:
        grown = growth_kb(lambda: llm.invoke("hello"))
        tool_runs = growth_kb(lambda: get_weather_tool().invoke({"city": "Oslo"}), runs=500)
    finally:
        handler.uninstall()
    # before: every run stayed in handler.trajectories (~4 KB a run: 6 MB here)
    assert grown < 300, f"{grown:.0f} KB held after {RUNS} runs"
    assert tool_runs < 100 and not handler._runs and not handler._members  # a tool's own run
    assert len(handler.trajectories) == KEPT


def test_a_tool_that_fails_on_its_own_closes_its_run():
    from langchain_core.tools import tool

    @tool
    def broken(city: str) -> str:
        """Always fails."""
        raise RuntimeError("down")

    handler = RolloutCallbackHandler().install()
    try:
        for _ in range(3):
            with pytest.raises(RuntimeError):
                broken.invoke({"city": "Oslo"})
    finally:
        handler.uninstall()
    assert not handler._runs and not handler._members and not handler._parents
    assert [t.metadata.get("exception_type") for t in handler.trajectories] == ["RuntimeError"] * 3


@pytest.mark.slow
def test_a_llamaindex_handler_closes_each_agent_run_and_keeps_nothing_per_run(instant):
    llm = WandbLLM(model="m", base_url=instant, api_key="k")
    handler = RolloutEventHandler().install()
    agent = FunctionAgent(tools=[get_weather], llm=llm)
    loop = asyncio.new_event_loop()
    try:
        grown = growth_kb(lambda: loop.run_until_complete(ask(agent)), runs=500)
        chats = growth_kb(lambda: llm.chat([ChatMessage(role="user", content="hi")]))
    finally:
        loop.close()
        handler.uninstall()
    # before: each workflow run's rollout stayed open until handler.finish(), forever
    assert handler._hook._open == {} and len(handler.trajectories) == KEPT
    assert grown < 300 and chats < 300, (grown, chats)


def get_weather(city: str) -> str:
    """The weather of a city."""
    return f"Sunny in {city}"


async def ask(agent) -> str:
    return str(await agent.run("hi"))


def get_weather_tool():
    from langchain_core.tools import tool

    return tool(get_weather)


@pytest.mark.slow
def test_the_local_backend_keeps_few_adapters_and_trainers_in_memory(tmp_path):
    with LocalBackend.start(
        data_dir=tmp_path / "data", model_cache_dir=MODEL_CACHE, max_loaded_adapters=2,
        max_live_models=1,
    ) as backend:  # fmt: skip
        oai = openai.OpenAI(base_url=backend.base_url, api_key=backend.api_key, max_retries=0)
        store = RolloutStore(tmp_path / "r.db")
        sampled_rollouts(oai, 6, store=store)
        engine, worker = backend.app.state.backend.engine, backend.app.state.backend.worker
        refs, loaded, live = [], [], []
        for index in range(4):
            tm = TrainableModel(f"soak-{index}", "soak", backend.model_id,
                                client=backend.client(), history_dir=tmp_path, progress=False)  # fmt: skip
            tm.train_rl(store.groups(), {"learning_rate": 1e-5})
            refs.append(tm.ref_at(1))
            live.append(len(worker._live))
            for ref in refs:  # every checkpoint so far, in turn: more than are kept loaded
                reply = oai.chat.completions.create(
                    model=ref, messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
                assert reply.choices[0].message.content is not None
                loaded.append(len(engine.adapters))
        # a model evicted from memory trains on from its state on disk
        tm0 = TrainableModel("soak-0", "soak", backend.model_id, client=backend.client(),
                             history_dir=tmp_path, progress=False)  # fmt: skip
        assert tm0.train_rl(store.groups(), {"learning_rate": 1e-5}).step == 2
    assert max(loaded) == 2 and max(live) == 1, (loaded, live)
