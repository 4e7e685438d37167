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
import random
import tempfile
import time
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
HELD_OUT_CITIES = ["Tokyo", "Cairo", "Lima", "Toronto", "Sydney", "Nairobi", "Seoul", "Chicago",
                   "Mumbai", "Santiago", "Boston", "Denver"]  # fmt: skip
EVAL_SAMPLES = 2
QUESTIONS = [
    "What's the weather like in {city}?",
    "Is it raining in {city} right now?",
    "How warm is it in {city} today?",
    "Tell me the current weather in {city}.",
    "Do I need an umbrella in {city}?",
]
INSTRUCTION = (
    'Do not answer yourself. Reply only with <tool_call>{{"name": "get_weather", '
    '"arguments": {{"city": "<city>"}}}}</tool_call>'
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


async def evaluate(backend: LocalBackend, ref: str, temperature: float) -> float:
    """Mean reward on the held-out cities: EVAL_SAMPLES seeded samples per city, so the score
    moves with the policy's odds of a right call (greedy decoding flips only at the end)."""
    llm = ChatWandb(
        model=ref,
        base_url=backend.base_url,
        api_key=backend.api_key,
        temperature=temperature,
        max_tokens=40,
    )
    agent = build_agent(llm)
    rng = random.Random(0)
    jobs = [
        run_agent(agent, task(city, rng), city, seed=1000 * i + j, temperature=temperature)
        for i, city in enumerate(HELD_OUT_CITIES)
        for j in range(EVAL_SAMPLES)
    ]
    scores = await asyncio.gather(*jobs)
    return sum(scores) / len(scores)


async def train_loop(backend: LocalBackend, args: argparse.Namespace, started: float) -> dict:
    """Evaluate, then (collect groups of rollouts -> one RL step -> evaluate) x steps."""
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
    curve = [(0, await evaluate(backend, tm.ref, args.temperature))]
    print(
        f"\n{'step':>4} {'train reward':>12} {'trainable groups':>16} {'held-out reward':>15} "
        f"{'rollouts':>8} {'train':>6} {'total':>6}"
    )
    print(
        f"{0:>4} {'':>12} {'':>16} {curve[0][1]:>15.2f} {'':>8} {'':>6} {time.monotonic() - started:>5.0f}s"
    )
    sampler = ChatWandb(
        model=tm.ref,
        base_url=backend.base_url,
        api_key=backend.api_key,
        temperature=args.temperature,
        max_tokens=40,
    )
    agent = build_agent(sampler)
    try:
        for step in range(1, args.steps + 1):
            cities = rng.sample(TRAIN_CITIES, args.groups)
            jobs = []
            for city in cities:
                question = task(city, rng)
                jobs += [
                    run_agent(
                        agent,
                        question,
                        city,
                        seed=rng.randrange(1 << 30),
                        temperature=args.temperature,
                        group=f"{args.name}-step{step}-{city}",
                        store=store,
                    )
                    for _ in range(args.group_size)
                ]
            sampling = time.monotonic()
            rewards = await asyncio.gather(*jobs)
            sampling = time.monotonic() - sampling
            prefix = f"{args.name}-step{step}-"
            groups = [
                g for g in store.groups() if str(g.metadata.get("group", "")).startswith(prefix)
            ]
            result = tm.train_rl(groups, {"learning_rate": args.lr})
            held_out = await evaluate(backend, tm.ref, args.temperature)
            curve.append((step, held_out))
            trainable = len(groups) - result.dropped_groups
            print(
                f"{step:>4} {sum(rewards) / len(rewards):>12.2f} {trainable:>13}/{len(groups):<2} "
                f"{held_out:>15.2f} {sampling:>7.0f}s {result.metrics.get('time/step_trainer_s', 0):>5.0f}s "
                f"{time.monotonic() - started:>5.0f}s"
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
    return {"model": tm, "curve": curve, "png": png, "rollouts": store.count()}


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
        print(
            f"\nheld-out reward {curve[0][1]:.2f} -> {curve[-1][1]:.2f} after {args.steps} RL steps "
            f"({result['rollouts']} rollouts recorded, {tm.latest_step()} checkpoints); "
            f"{time.monotonic() - started:.0f}s in all"
        )
        print(
            f"newest checkpoint served as {tm.ref}; reward curve: {result['png']}; "
            f"history: {tm.history_path}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4, help="RL steps (default 4)")
    parser.add_argument("--groups", type=int, default=4, help="prompts per step (default 4)")
    parser.add_argument("--group-size", type=int, default=8, help="rollouts per prompt (default 8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
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
