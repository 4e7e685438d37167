"""Trace-hook cost against an instant loopback server, interleaved.

Targets (issue 7): <= 100 µs and <= 3% of an agent step per LLM call with recording on;
500 concurrent rollouts: 0 lost, throughput >= 0.8x the same loop with recording off.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from instant_server import start

from langchain_wandb import ChatWandb, RolloutCallbackHandler
from wandb_serverless.rollouts import RolloutStore, rollout

ROUNDS = 400
CONCURRENT = 500


def run() -> dict[str, float]:
    url, server = start()
    # the SDK's usual retries (the same for both loops): a burst of 500 connects can be refused
    llm = ChatWandb(model="m", base_url=url, api_key="k", max_retries=3)
    handler = RolloutCallbackHandler()
    with tempfile.TemporaryDirectory() as tmp:
        store = RolloutStore(Path(tmp) / "r.db")

        def plain() -> None:
            llm.invoke("Hello")

        def recorded() -> None:
            with rollout(group="g"):
                llm.invoke("Hello", config={"callbacks": [handler]})

        for fn in (plain, recorded):
            for _ in range(20):
                fn()
        samples: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(ROUNDS):
            for name, fn in (("off", plain), ("on", recorded)):
                started = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - started)
        off, on = (statistics.median(samples[k]) for k in ("off", "on"))

        async def loop(record: bool) -> float:
            async def one(i: int) -> None:
                if record:
                    async with rollout(group=f"g{i % 50}", store=store):
                        await llm.ainvoke("Hello", config={"callbacks": [handler]})
                else:
                    await llm.ainvoke("Hello")

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(CONCURRENT)))
            return CONCURRENT / (time.perf_counter() - started)

        plain_rate = asyncio.run(loop(False))
        recorded_rate = asyncio.run(loop(True))
        stored = store.count()
    server.shutdown()
    return {
        "llm_call_us_off": off * 1e6,
        "llm_call_us_on": on * 1e6,
        "hook_cost_us": (on - off) * 1e6,
        "hook_cost_fraction": (on - off) / off,
        "rollouts_per_s_off": plain_rate,
        "rollouts_per_s_on": recorded_rate,
        "concurrent_throughput_ratio": recorded_rate / plain_rate,
        "concurrent_rollouts_lost": float(CONCURRENT - stored),
    }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:32s} {value:10.3f}")
