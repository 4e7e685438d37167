"""Runs for days: memory and per-call cost over long runs (issue 25). By hand, never in tests:

    python bench/bench_soak.py [--runs 50000] [--requests 20000] [--models 20]

1. **Trace hooks**: ``--runs`` runs of a LangChain chain with ``RolloutCallbackHandler``
   installed (each run its own rollout), of a LlamaIndex ``WandbLLM.chat`` recorded by
   ``RolloutEventHandler`` (grouped by a ``rollout_id`` tag, then ``finish()``), and a tenth as
   many ``FunctionAgent`` runs (each workflow run its own rollout), against an instant loopback
   server in its own process. Resident memory (after a garbage collection) once warmed up and
   at the end; the mean cost of a call over the first and the last 1,000 runs.
2. **The local backend**: ``--models`` models each trained one RL step, and ``--requests``
   chat requests spread over every checkpoint so far (more checkpoints than adapters kept
   loaded). Resident memory of the process once two models trained and at the end; how many
   adapters are loaded and how many models' trainers are kept in memory.
3. **The rollout store**: ``save`` and ``groups(names=...)`` (one step's four groups of eight)
   per rollout, with 10,000, 100,000 and 1,000,000 rollouts stored (each ~3 KB: a turn with
   its logprobs and token ids).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from instant_server import start_process  # noqa: E402

MB = 1024 * 1024
WARM_UP = 2000
WINDOW = 1000


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / MB


def soak(call, runs: int) -> dict[str, float]:
    """Resident memory growth after warm-up and the cost of a call early and late."""
    for _ in range(WARM_UP):
        call()
    warm = rss_mb()
    times: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    first, last = statistics.mean(times[:WINDOW]), statistics.mean(times[-WINDOW:])
    return {
        "rss_growth_mb": rss_mb() - warm,
        "first_call_us": first * 1e6,
        "last_call_us": last * 1e6,
        "call_growth": last / first,
    }


def hooks(runs: int) -> dict[str, float]:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.instrumentation.dispatcher import instrument_tags
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.wandb import RolloutEventHandler, WandbLLM

    from langchain_wandb import ChatWandb, RolloutCallbackHandler

    url, server = start_process()
    try:
        chain = (
            ChatPromptTemplate.from_messages([("user", "Say {word}")])
            | ChatWandb(model="m", base_url=url, api_key="k")
            | StrOutputParser()
        )
        langchain_handler = RolloutCallbackHandler().install()
        langchain = soak(lambda: chain.invoke({"word": "hello"}), runs)
        langchain_handler.uninstall()

        llm = WandbLLM(model="m", base_url=url, api_key="k")
        handler = RolloutEventHandler().install()

        def llamaindex_call() -> None:  # recorded by the handler, grouped by its tag
            with instrument_tags({"rollout_id": uuid.uuid4().hex}):
                llm.chat([ChatMessage(role="user", content="hello")])
            handler.finish()

        llamaindex = soak(llamaindex_call, runs)
        agent = FunctionAgent(tools=[get_weather], llm=llm)
        loop = asyncio.new_event_loop()
        agents = soak(lambda: loop.run_until_complete(ask(agent)), runs // 10)
        loop.close()
        open_rollouts = len(handler._hook._open)  # each workflow run's closes when it ends
        handler.uninstall()
    finally:
        server.kill()
    return {
        **{f"langchain_{k}": v for k, v in langchain.items()},
        **{f"llamaindex_{k}": v for k, v in llamaindex.items()},
        **{f"llamaindex_agent_{k}": v for k, v in agents.items()},
        "llamaindex_agent_open_rollouts": float(open_rollouts),
        "hook_runs": float(runs),
    }


def get_weather(city: str) -> str:
    """The weather of a city."""
    return f"Sunny in {city}"


async def ask(agent) -> str:
    return str(await agent.run("hi"))


def backend(requests: int, models: int) -> dict[str, float]:
    import openai

    from wandb_serverless import TrainableModel
    from wandb_serverless.local import LocalBackend
    from wandb_serverless.rollouts import LLMCall, TrajectoryGroup, rollout
    from wandb_serverless.rollouts.recorder import make_choice

    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalBackend.start(
            data_dir=tmp, model_cache_dir=HERE.parent / ".cache" / "models"
        ) as server,
    ):
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key)
        prompt = [{"role": "user", "content": "Name a color."}]
        sampled = openai.OpenAI(base_url=server.base_url, api_key=server.api_key).chat.completions.create(
            model="default", messages=prompt, n=8, max_tokens=8, logprobs=True,
            extra_body={"return_token_ids": True}, seed=1,
        )  # fmt: skip
        trajectories = []
        for i, choice in enumerate(sampled.choices):
            data = choice.model_dump(mode="json")
            turn = make_choice(data["message"], finish_reason=data["finish_reason"],
                               logprobs=data["logprobs"], token_ids=data["token_ids"],
                               prompt_token_ids=sampled.model_extra["prompt_token_ids"])  # fmt: skip
            with rollout() as run:
                run.add_call(LLMCall(prompt, None, turn))
                run.reward = float(i % 2)
            trajectories.append(run.trajectory)
        group = TrajectoryGroup(trajectories=trajectories)
        engine = server.app.state.backend.engine
        worker = server.app.state.backend.worker
        refs: list[str] = []
        warm, loaded, live = 0.0, 0, 0
        started = time.monotonic()

        async def serve(count: int) -> None:
            for start in range(0, count, 32):  # blocks of one checkpoint, 32 at once
                ref = refs[(start // 32) % len(refs)]
                await asyncio.gather(*(
                    client.chat.completions.create(model=ref, messages=prompt, max_tokens=1)
                    for _ in range(min(32, count - start))
                ))  # fmt: skip

        for index in range(models):
            tm = TrainableModel(f"soak-{index}", "soak", server.model_id, client=server.client(),
                                history_dir=tmp, progress=False)  # fmt: skip
            tm.train_rl([group], {"learning_rate": 1e-5})
            refs.append(tm.ref_at(1))
            asyncio.run(serve(requests // models))
            loaded, live = max(loaded, len(engine.adapters)), max(live, len(worker._live))
            if index == 1:
                warm = rss_mb()
        return {
            "backend_requests": float(requests),
            "backend_models": float(models),
            "backend_rss_growth_mb": rss_mb() - warm,
            "backend_max_loaded_adapters": float(loaded),
            "backend_max_models_in_memory": float(live),
            "backend_seconds": time.monotonic() - started,
        }


def store(sizes: list[int]) -> dict[str, float]:
    from wandb_serverless.rollouts import LLMCall, RolloutStore, rollout
    from wandb_serverless.rollouts.recorder import make_choice

    tokens = [f" t{i}" for i in range(24)]
    turn = make_choice(
        {"content": "".join(tokens)}, finish_reason="stop",
        logprobs={"content": [{"token": t, "logprob": -0.5, "bytes": list(t.encode()),
                               "top_logprobs": []} for t in tokens]},
        token_ids=list(range(100, 124)), prompt_token_ids=list(range(1, 60)),
    )  # fmt: skip
    messages = [{"role": "system", "content": "You are a weather agent." * 4},
                {"role": "user", "content": "What is the weather in Paris?"}]  # fmt: skip
    with rollout() as run:
        run.add_call(LLMCall(messages, None, turn))
    template = run.trajectory
    data = template.model_dump_json()
    out: dict[str, float] = {"store_rollout_bytes": float(len(data))}
    with tempfile.TemporaryDirectory() as tmp:
        db = RolloutStore(Path(tmp) / "soak.db")
        count = 0
        for size in sizes:
            while count < size:  # filled as committed rows (what save() writes), in bulk
                batch = min(10_000, size - count)
                rows = [(f"fill-{count + i}", f"fill-g{(count + i) // 8}", time.time(), 0.5, "{}",
                         None, data) for i in range(batch)]  # fmt: skip
                db._commit(rows)
                count += batch
            step = uuid.uuid4().hex[:8]
            saves = []
            for i in range(512):  # a step's rollouts saved as they finish
                trajectory = template.model_copy(
                    update={"metadata": {"rollout_id": f"{step}-{i}", "group": f"{step}-g{i % 4}"}}
                )
                started = time.perf_counter()
                db.save(trajectory, group=f"{step}-g{i % 4}")
                saves.append(time.perf_counter() - started)
            names = [f"fill-g{(size // 8) - 1 - g}" for g in range(4)]  # four groups of eight
            reads = []
            for _ in range(50):
                started = time.perf_counter()
                groups = db.groups(names=names)
                reads.append(time.perf_counter() - started)
            read = sum(len(g.trajectories) for g in groups)
            out[f"store_save_us_per_rollout_{size}"] = statistics.median(saves) * 1e6
            out[f"store_groups_us_per_rollout_{size}"] = statistics.median(reads) / read * 1e6
        db.close()
    first, last = sizes[0], sizes[-1]
    out["store_save_growth"] = (
        out[f"store_save_us_per_rollout_{last}"] / out[f"store_save_us_per_rollout_{first}"]
    )
    out["store_groups_growth"] = (
        out[f"store_groups_us_per_rollout_{last}"] / out[f"store_groups_us_per_rollout_{first}"]
    )
    return out


def run(runs: int = 50_000, requests: int = 20_000, models: int = 20,
        sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)) -> dict[str, float]:  # fmt: skip
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return {**hooks(runs), **store(list(sizes)), **backend(requests, models)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    for key, value in run(args.runs, args.requests, args.models, tuple(args.sizes)).items():
        print(f"{key:40s} {value:12.3f}")
