"""Trace-hook cost against an instant loopback server, interleaved.

Targets (issue 7): <= 100 µs and <= 3% of an agent step per LLM call with recording on;
500 concurrent rollouts: 0 lost, throughput >= 0.8x the same loop with recording off.

"Recording on" is ``with rollout(...)`` around ChatWandb: the adapter records its own calls
(exact tokens; the server returns logprobs and token ids as a recording client asks). The
Trajectory is built when first used, so "on" times the recording; "on + trajectory" also
builds it (validation of every token's logprob, as a store does at exit). Also reported: the
LangChain handler path for runs without ``rollout()`` (each run its own rollout), and what
langchain-core itself costs per call for any handler (an empty one), and what capturing a
plain openai client's call costs (``wandb_serverless.capture``: the same call, streamed or not,
inside a rollout and outside one, where the wrapper hands it straight on), with the part of it
the SDK itself spends on the logprobs and token ids capture asks for (the server sends them,
in every chunk of a stream, as vLLM does; the SDK reads and builds them), and with the
trajectory built. The agent step that the hook's share is taken of is timed in the same rounds.

The server runs in its own process, as a real one does (in-process, its Python work shared
the client's GIL). The machine's speed drifts between seconds, so every figure is paired:
per-call costs within a round of all cases (in a shuffled order: a call after another kind of
call pays for colder caches, and a fixed order gave that to the same cases every round), throughputs as per-round ratios of back-to-back
500-rollout bursts (order alternating), medians over rounds.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
from instant_server import start_process
from interleave import interleaved
from langchain_core.callbacks import BaseCallbackHandler

from langchain_wandb import ChatWandb, RolloutCallbackHandler
from wandb_serverless.capture_streams import _AsAsked
from wandb_serverless.rollouts import RolloutStore, rollout

ROUNDS = 1500  # a median of paired differences: its error shrinks as 1/sqrt(rounds)
HELLO = [{"role": "user", "content": "Hello"}]
TOKENS: dict[str, Any] = {"logprobs": True, "extra_body": {"return_token_ids": True}}
CONCURRENT = 500
BURST_ROUNDS = 30


def _agent_step(llm: ChatWandb):
    """One LangGraph agent step (a model node over the message state), as a callable."""
    from langgraph.graph import END, START, MessagesState, StateGraph

    def model(state: MessagesState) -> dict:
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", model)
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    agent = graph.compile()
    return lambda: agent.invoke({"messages": [("user", "Hello")]})


def _in_rollout(call, build: bool = False) -> None:
    with rollout(group="g") as run:
        call()
    if build:
        assert run.trajectory is not None


def run() -> dict[str, float]:
    url, server = start_process()
    # the SDK's usual retries (the same for both loops): a burst of 500 connects can be refused
    llm = ChatWandb(model="m", base_url=url, api_key="k", max_retries=3)
    handler = RolloutCallbackHandler()
    with tempfile.TemporaryDirectory() as tmp:
        store = RolloutStore(Path(tmp) / "r.db")

        class Empty(BaseCallbackHandler):
            run_inline = True

        empty = Empty()
        oai = openai.OpenAI(base_url=url, api_key="k", max_retries=3)  # a framework's own client

        def sdk_call(**extra: Any) -> None:
            oai.chat.completions.create(model="m", messages=HELLO, **extra)

        def sdk_stream(**extra: Any) -> None:
            for _ in oai.chat.completions.create(model="m", messages=HELLO, stream=True, **extra):
                pass

        def sdk_stream_built_as_captured() -> None:
            """The plain stream, its chunks built as capture builds them (``construct_type``,
            without the SDK's dispatch): what recording itself costs is measured against it."""
            stream = oai.chat.completions.create(model="m", messages=HELLO, stream=True)
            stream._client = _AsAsked(stream._client, frozenset())
            for _ in stream:
                pass

        step = _agent_step(llm)
        cases = {
            "off": lambda: llm.invoke("Hello"),
            "on": lambda: _in_rollout(lambda: llm.invoke("Hello")),
            "on_built": lambda: _in_rollout(lambda: llm.invoke("Hello"), build=True),
            "handler": lambda: llm.invoke("Hello", config={"callbacks": [handler]}),
            "empty_handler": lambda: llm.invoke("Hello", config={"callbacks": [empty]}),
            "sdk_off": sdk_call,
            "sdk_on": lambda: _in_rollout(sdk_call),
            "sdk_on_built": lambda: _in_rollout(sdk_call, build=True),
            # what the SDK itself spends on the tokens capture asks for (no rollout: not captured)
            "sdk_tokens": lambda: sdk_call(**TOKENS),
            "sdk_stream_off": sdk_stream,
            "sdk_stream_on": lambda: _in_rollout(sdk_stream),
            "sdk_stream_tokens": lambda: sdk_stream(**TOKENS),
            "sdk_stream_on_built": lambda: _in_rollout(sdk_stream, build=True),
            "sdk_stream_off_as_captured": sdk_stream_built_as_captured,
            # the step the hook's share is taken of, timed in the same rounds (alone, in a loop
            # of its own, it ran with warm caches: faster than in the rounds that time the hook)
            "step_off": step,
            "step_on": lambda: _in_rollout(step),
        }
        samples = interleaved(cases, ROUNDS)
        median = {name: statistics.median(values) for name, values in samples.items()}
        off = median["off"]
        # paired per round (the machine's speed drifts between rounds, not within one)
        cost = {
            name: statistics.median(
                a - b for a, b in zip(samples[name], samples["off"], strict=True)
            )
            for name in ("on", "on_built", "handler", "empty_handler")
        }
        for name, base in [
            ("sdk_on", "sdk_off"),
            ("sdk_on_built", "sdk_off"),
            ("sdk_tokens", "sdk_off"),
            ("sdk_stream_on", "sdk_stream_off"),
            ("sdk_stream_tokens", "sdk_stream_off"),
            ("sdk_stream_on_built", "sdk_stream_off"),
            ("step_on", "step_off"),
        ]:
            cost[name] = statistics.median(
                a - b for a, b in zip(samples[name], samples[base], strict=True)
            )
        built_alike = zip(
            samples["sdk_stream_on"], samples["sdk_stream_off_as_captured"], strict=True
        )
        cost["sdk_stream_on_vs_built_alike"] = statistics.median(a - b for a, b in built_alike)

        async def loop(record: bool) -> float:
            async def one(i: int) -> None:
                if record:
                    async with rollout(group=f"g{i % 50}", store=store):
                        await llm.ainvoke("Hello")
                else:
                    await llm.ainvoke("Hello")

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(CONCURRENT)))
            return CONCURRENT / (time.perf_counter() - started)

        async def ratios() -> tuple[float, float, list[float]]:
            # one event loop (the async client's connections belong to it), warmed up first
            await loop(False)
            await loop(True)
            rates: dict[bool, list[float]] = {False: [], True: []}
            for i in range(BURST_ROUNDS):
                for record in (False, True) if i % 2 == 0 else (True, False):
                    rates[record].append(await loop(record))
            paired = [on / off for off, on in zip(rates[False], rates[True], strict=True)]
            return statistics.median(rates[False]), statistics.median(rates[True]), paired

        plain_rate, recorded_rate, paired = asyncio.run(ratios())
        lost = CONCURRENT * (BURST_ROUNDS + 1) - store.count()  # every recorded burst
    server.kill()
    return {
        "llm_call_us_off": off * 1e6,
        "llm_call_us_on": median["on"] * 1e6,
        "agent_step_us_off": median["step_off"] * 1e6,
        "agent_step_recording_cost_us": cost["step_on"] * 1e6,
        "agent_step_recording_fraction": cost["step_on"] / median["step_off"],
        "hook_cost_us": cost["on"] * 1e6,
        "hook_cost_with_trajectory_us": cost["on_built"] * 1e6,
        "hook_cost_fraction_of_llm_call": cost["on"] / off,
        "hook_cost_fraction": cost["on"] / median["step_off"],
        "handler_path_cost_us": cost["handler"] * 1e6,
        "langchain_any_handler_cost_us": cost["empty_handler"] * 1e6,
        "openai_sdk_call_us_off": median["sdk_off"] * 1e6,
        "openai_sdk_capture_cost_us": cost["sdk_on"] * 1e6,
        "openai_sdk_capture_with_trajectory_us": cost["sdk_on_built"] * 1e6,
        "openai_sdk_tokens_cost_us": cost["sdk_tokens"] * 1e6,
        "openai_sdk_stream_call_us_off": median["sdk_stream_off"] * 1e6,
        "openai_sdk_stream_capture_cost_us": cost["sdk_stream_on"] * 1e6,
        "openai_sdk_stream_tokens_cost_us": cost["sdk_stream_tokens"] * 1e6,
        "openai_sdk_stream_capture_with_trajectory_us": cost["sdk_stream_on_built"] * 1e6,
        "openai_sdk_stream_capture_vs_built_alike_us": cost["sdk_stream_on_vs_built_alike"] * 1e6,
        "rollouts_per_s_off": plain_rate,
        "rollouts_per_s_on": recorded_rate,
        "concurrent_throughput_ratio": statistics.median(paired),
        "concurrent_ratio_quartile_low": statistics.quantiles(paired)[0],
        "concurrent_ratio_quartile_high": statistics.quantiles(paired)[2],
        "concurrent_rollouts_lost": float(lost),
    }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:32s} {value:10.3f}")
