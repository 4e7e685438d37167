"""The main job, end to end on the local backend (`make demo`):

a LangGraph agent with ChatWandb calls a weather tool; the rollout hook records every run with
its exact tokens; a computable reward scores tool-use discipline (call get_weather with the
city asked about); groups of rollouts train RL steps on the local backend; the newest checkpoint
is served back to the agent (`model=tm.ref`) and evaluated on held-out cities after every step.

    python examples/demo.py [--steps 4] [--groups 4] [--group-size 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated, TypedDict

from langchain_core.messages import AnyMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode

from langchain_wandb import ChatWandb, RolloutCallbackHandler
from wandb_serverless import TrainableModel, plot_reward_curve
from wandb_serverless.local import LocalBackend
from wandb_serverless.rollouts import RolloutStore, rollout

HERE = Path(__file__).resolve().parent
MODEL_CACHE = HERE.parent / ".cache" / "models"
TRAIN_CITIES = [
    "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Warsaw", "Lisbon", "Dublin", "Oslo",
    "Stockholm", "Helsinki", "Athens", "Budapest", "Brussels", "Amsterdam", "Copenhagen", "Zurich",
    "Munich", "Milan", "Barcelona", "Porto", "Krakow", "Seville", "Lyon", "Hamburg", "Naples",
    "Valencia", "Geneva", "Edinburgh",
]  # fmt: skip
HELD_OUT_CITIES = [
    "Tokyo", "Cairo", "Lima", "Toronto", "Sydney", "Nairobi", "Seoul", "Chicago", "Mumbai",
    "Santiago", "Boston", "Denver", "Dallas", "Bangkok", "Istanbul", "Montreal", "Havana", "Dubai",
    "Manila", "Lagos", "Delhi", "Houston", "Bogota", "Melbourne",
]  # fmt: skip
QUESTIONS = [
    "What's the weather like in {city}?",
    "Is it raining in {city} right now?",
    "How warm is it in {city} today?",
    "Tell me the current weather in {city}.",
    "Do I need an umbrella in {city}?",
]
INSTRUCTION = (
    'Do not answer yourself. Reply only with <tool_call>{"name": "get_weather", '
    '"arguments": {"city": "<city>"}}</tool_call>'
)


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny and 21 degrees in {city}."


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def build_agent(llm: ChatWandb):
    """Agent → tool → done: the smallest real tool-using LangGraph agent."""
    bound = llm.bind_tools([get_weather])

    async def agent(state: State, config: RunnableConfig) -> dict:
        # async, so every rollout's request reaches the engine at once (a sync node would run
        # on LangGraph's small thread pool); the rollout's seed makes its sampling reproducible
        seed = config.get("configurable", {}).get("seed")
        return {"messages": [await bound.ainvoke(state["messages"], seed=seed)]}

    def route(state: State) -> str:
        return "tools" if state["messages"][-1].tool_calls else END

    graph = StateGraph(State)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([get_weather]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", END])
    graph.add_edge("tools", END)
    return graph.compile()


def task(city: str, rng: random.Random) -> str:
    return rng.choice(QUESTIONS).format(city=city) + " " + INSTRUCTION


def reward(messages: list[AnyMessage], city: str) -> float:
    """1.0: get_weather called with the asked city; 0.25: called with another real city;
    0 otherwise. The instruction's ``<city>`` placeholder earns nothing: with credit for it (or
    for a call written as text) the policy collapsed onto the placeholder in two steps."""
    answer = messages[1] if len(messages) > 1 else None
    for call in getattr(answer, "tool_calls", None) or []:
        if call["name"] == "get_weather":
            asked = str(call["args"].get("city", "")).strip()
            if asked.lower() == city.lower():
                return 1.0
            return 0.25 if asked and "<" not in asked and "city" not in asked.lower() else 0.0
    return 0.0


async def run_agent(
    agent,
    question: str,
    city: str,
    *,
    seed: int | None,
    temperature: float,
    group: str | None = None,
    store: RolloutStore | None = None,
) -> float:
    async with rollout(group=group, metadata={"city": city}, store=store) as run:
        result = await agent.ainvoke(
            {"messages": [HumanMessage(question)]},
            {"configurable": {"seed": seed}, "recursion_limit": 6},
        )
        run.reward = reward(result["messages"], city)
    return run.reward


async def evaluate(backend: LocalBackend, ref: str) -> float:
    """Mean reward of greedy answers on the 24 held-out cities (never trained on): the agent's
    most likely behaviour, deterministic, so steps compare without sampling noise; one city
    is 0.04 of the score."""
    llm = ChatWandb(
        model=ref, base_url=backend.base_url, api_key=backend.api_key, temperature=0, max_tokens=40
    )
    agent = build_agent(llm)
    rng = random.Random(0)
    jobs = [
        run_agent(agent, task(city, rng), city, seed=None, temperature=0)
        for city in HELD_OUT_CITIES
    ]
    scores = await asyncio.gather(*jobs)
    return sum(scores) / len(scores)


async def collect(
    agent, args: argparse.Namespace, rng: random.Random, store: RolloutStore, tag: str
) -> tuple[list, list[float]]:
    """One round of rollouts: ``args.groups`` training cities x ``args.group_size`` samples."""
    jobs = []
    for city in rng.sample(TRAIN_CITIES, args.groups):
        question = task(city, rng)
        jobs += [
            run_agent(
                agent,
                question,
                city,
                seed=rng.randrange(1 << 30),
                temperature=args.temperature,
                group=f"{tag}-{city}",
                store=store,
            )
            for _ in range(args.group_size)
        ]
    rewards = list(await asyncio.gather(*jobs))
    groups = [g for g in store.groups() if str(g.metadata.get("group", "")).startswith(tag)]
    return groups, rewards


async def train_loop(backend: LocalBackend, args: argparse.Namespace, started: float) -> dict:
    """Evaluate, then (collect groups of rollouts -> one RL step -> evaluate) x steps.

    A step whose groups all have one reward (no signal: at the start the base model makes the
    right call in ~3-5% of samples) samples another round of fresh groups, up to
    ``args.max_rounds`` (DAPO's dynamic sampling, bounded): a cold start costs seconds of
    sampling instead of a wasted step.
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tm = TrainableModel(
        args.name,
        "demo",
        backend.model_id,
        client=backend.client(),
        history_dir=out,
        progress=False,
    )
    store = RolloutStore(out / "rollouts.db")
    handler = RolloutCallbackHandler(store=store).install()  # zero-code capture
    rng = random.Random(args.seed)
    run_id = uuid.uuid4().hex[:8]  # a store kept from an earlier run never mixes in
    curve = [(0, await evaluate(backend, tm.ref))]
    print(
        f"\n{'step':>4} {'train reward':>12} {'trainable groups':>16} {'held-out reward':>15} "
        f"{'rollouts':>8} {'train':>6} {'total':>6}"
    )
    print(
        f"{0:>4} {'':>12} {'':>16} {curve[0][1]:>15.2f} {'':>8} {'':>6} {time.monotonic() - started:>5.0f}s"
    )
    config = {"learning_rate": args.lr} if args.lr else None  # None: the backend's default
    steps = []
    try:
        for step in range(1, args.steps + 1):
            # tm.ref: the newest checkpoint (the base model before the first one)
            sampler = ChatWandb(
                model=tm.ref,
                base_url=backend.base_url,
                api_key=backend.api_key,
                temperature=args.temperature,
                max_tokens=40,
            )
            agent = build_agent(sampler)
            sampling = time.monotonic()
            groups, rewards = [], []
            for round_ in range(args.max_rounds):
                tag = f"{args.name}-{run_id}-step{step}-r{round_}"
                more_groups, more_rewards = await collect(agent, args, rng, store, tag)
                groups += more_groups
                rewards += more_rewards
                if any(g.has_signal() for g in groups):
                    break
            sampling = time.monotonic() - sampling
            result = tm.train_rl(groups, config)
            held_out = await evaluate(backend, tm.ref)
            curve.append((step, held_out))
            trainable = len(groups) - result.dropped_groups
            train_s = result.metrics.get("time/step_trainer_s", 0.0)
            print(
                f"{step:>4} {sum(rewards) / len(rewards):>12.2f} {trainable:>13}/{len(groups):<2} "
                f"{held_out:>15.2f} {sampling:>7.0f}s {train_s:>5.0f}s "
                f"{time.monotonic() - started:>5.0f}s"
            )
            steps.append(
                {
                    "step": step,
                    "train_reward": sum(rewards) / len(rewards),
                    "trainable_groups": trainable,
                    "groups": len(groups),
                    "held_out": held_out,
                    "sampling_s": sampling,
                    "train_s": train_s,
                    "elapsed_s": time.monotonic() - started,
                }
            )
            tm.log_metrics(
                result.step,
                {"eval/held_out_reward": held_out, "train/reward": sum(rewards) / len(rewards)},
            )
    finally:
        handler.uninstall()
    png = plot_reward_curve(
        curve, out / "reward_curve.png", title="held-out reward, weather tool use"
    )
    return {"model": tm, "curve": curve, "steps": steps, "png": png, "rollouts": store.count()}


def summary_line(curve: list[tuple[int, float]], seconds: float) -> str:
    """``baseline -> final, best step, time``: how `make demo` ends."""
    best_step, best = max(curve, key=lambda point: (point[1], -point[0]))
    return (
        f"held-out reward {curve[0][1]:.2f} -> {curve[-1][1]:.2f} "
        f"(best {best:.2f} at step {best_step}) in {seconds:.0f} s"
    )


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as data_dir,
        LocalBackend.start(
            data_dir=data_dir, model_cache_dir=MODEL_CACHE, max_batch_size=64
        ) as backend,
    ):
        print(
            f"local backend at {backend.base_url} serving {backend.model_id} "
            f"(ready in {time.monotonic() - started:.0f}s)"
        )
        result = await train_loop(backend, args, started)
        tm, curve = result["model"], result["curve"]
        seconds = time.monotonic() - started
        print(
            f"\n{result['rollouts']} rollouts recorded, {tm.latest_step()} checkpoints; newest "
            f"served as {tm.ref}; reward curve: {result['png']}; history: {tm.history_path}"
        )
        if args.summary:
            Path(args.summary).write_text(
                json.dumps(
                    {
                        "seed": args.seed,
                        "lr": args.lr,
                        "curve": curve,
                        "steps": result["steps"],
                        "seconds": seconds,
                    }
                )
            )
        print(summary_line(curve, seconds))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4, help="RL steps (default 4)")
    parser.add_argument("--groups", type=int, default=4, help="prompts per step (default 4)")
    parser.add_argument("--group-size", type=int, default=8, help="rollouts per prompt (default 8)")
    parser.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: the backend's, 5e-4)"
    )
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=3,
        help="rounds of groups a step samples while none has reward variance (default 3)",
    )
    parser.add_argument("--summary", help="write the run's curve and timings to this JSON file")
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="weather-agent", help="the trained model's name")
    parser.add_argument(
        "--out",
        default=str(HERE.parent / "demo-output"),
        help="where the PNG, history and rollouts go",
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
