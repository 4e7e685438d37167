"""The main job, end to end on the local backend (`make demo`):

a LangGraph agent with ChatWandb calls a weather tool; the library's learning loop
(`wandb_serverless.learning.LearningLoop`) runs it on training cities (every run recorded with
its exact tokens), scores tool-use discipline (call get_weather with the city asked about),
trains RL steps on the local backend, evaluates each checkpoint greedily on 24 held-out
cities, and serves it to agents as `:production` only if it is not worse than the one served.

    python examples/demo.py [--steps 4] [--groups 6] [--group-size 8] [--harmful-step N]

`--harmful-step 3 --groups 4 --after-rejection restore` trains step 3 on inverted rewards:
`:latest` falls, `:production` stays, and the next good step, trained on a copy of the served
checkpoint, is served again. (With the default 6 groups the policy is confident by step 3, and
one inverted step barely moves its greedy answers.)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import tempfile
import time
import uuid
from collections.abc import Callable
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
from wandb_serverless.learning import LearningLoop, Sampling, StepReport
from wandb_serverless.local import LocalBackend
from wandb_serverless.rollouts import RolloutStore

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


_HELD_OUT_RNG = random.Random(0)
#: each held-out city's question, fixed: every checkpoint answers the same 24 prompts
HELD_OUT_TASKS = {city: task(city, _HELD_OUT_RNG) for city in HELD_OUT_CITIES}


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


def play_fn(backend: LocalBackend, temperature: float, harmful_step: int | None = None):
    """The rollout function the loop runs: one agent run on ``sampling.model`` (the checkpoint
    sampled from, pinned), its reward returned. A training group asks its city one of the
    questions (drawn from the group's seed: the same for its 8 rollouts), sampled at
    ``temperature`` with the loop's seed; evaluation asks each held-out city its fixed question,
    greedily. ``harmful_step``: that step's training rewards are inverted (1 - reward), a
    corrupted reward the promotion gate must keep from agents."""

    @functools.lru_cache(maxsize=8)  # one agent per checkpoint and temperature
    def agent_for(model: str, temperature: float):
        llm = ChatWandb(
            model=model,
            base_url=backend.base_url,
            api_key=backend.api_key,
            temperature=temperature,
            max_tokens=40,
        )
        return build_agent(llm)

    async def play(city: str, sampling: Sampling) -> float:
        greedy = sampling.evaluation
        question = (
            HELD_OUT_TASKS[city] if greedy else task(city, random.Random(sampling.group_seed))
        )
        agent = agent_for(sampling.model, 0.0 if greedy else temperature)
        result = await agent.ainvoke(
            {"messages": [HumanMessage(question)]},
            {"configurable": {"seed": None if greedy else sampling.seed}, "recursion_limit": 6},
        )
        score = reward(result["messages"], city)
        if sampling.step == harmful_step and not greedy:  # the gate must keep it from agents
            return 1.0 - score
        return score

    return play


async def train_loop(backend: LocalBackend, args: argparse.Namespace, started: float) -> dict:
    """The library's learning loop on the weather agent: baseline evaluation, then per step
    sample 6 groups x 8 rollouts (more rounds while no group's rewards differ: at the start
    the base model makes the right call in ~3-5% of samples), one RL step, a greedy
    evaluation on 24 held-out cities, and the gate: the checkpoint is served as
    ``:production`` only if it is not worse than the served one by more than the tolerance.
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
    handler = RolloutCallbackHandler(store=store).install()  # zero-code capture (tool results)
    loop = LearningLoop(
        tm,
        play_fn(backend, args.temperature, getattr(args, "harmful_step", None)),
        train_scenarios=TRAIN_CITIES,  # distinct cities a round
        eval_scenarios=HELD_OUT_CITIES,
        group_size=args.group_size,
        groups_per_step=args.groups,
        max_rounds=args.max_rounds,
        min_trainable_groups=getattr(args, "min_trainable_groups", 1),
        tolerance=getattr(args, "tolerance", 0.05),
        max_steps_off_policy=getattr(args, "max_steps_off_policy", 0),
        after_rejection=getattr(args, "after_rejection", "continue"),
        train_config={"learning_rate": args.lr} if args.lr else None,  # None: the backend's
        state_dir=out / f"loop-{uuid.uuid4().hex[:8]}",  # a fresh loop per run
        store=store,
        seed=args.seed,
        progress=False,
    )
    table = Table(started, baseline=lambda: loop.state.score(0))
    loop.on_step = table.add
    try:
        await loop.arun(args.steps)
    finally:
        handler.uninstall()
    png = plot_reward_curve(
        table.curve, out / "reward_curve.png", title="held-out reward, weather tool use"
    )
    return {
        "model": tm,
        "loop": loop,
        "curve": table.curve,
        "steps": table.steps,
        "png": png,
        "rollouts": store.count(),
    }


class Table:
    """The demo's table, a row per step as the loop reports it."""

    def __init__(self, started: float, baseline: Callable[[], float | None]) -> None:
        self.started, self.baseline = started, baseline
        self.curve: list[tuple[int, float]] = []
        self.steps: list[dict] = []
        print(
            f"\n{'step':>4} {'train reward':>12} {'groups':>7} {'held-out':>8} "
            f"{'served (step)':>13} {'decision':>9} {'sample':>6} {'train':>5} {'total':>6}"
        )

    def add(self, report: StepReport) -> None:
        if not self.curve:  # the baseline, evaluated while step 1 sampled
            self.curve.append((0, self.baseline() or 0.0))
            self._row(0, "", "", self.curve[0][1], self.curve[0][1], 0, "", "", "")
        latest = report.eval_score if report.checkpoint is not None else self.curve[-1][1]
        held_out = latest if latest is not None else 0.0
        self.curve.append((report.step, held_out))
        elapsed = time.monotonic() - self.started
        row = {
            "step": report.step,
            "checkpoint": report.checkpoint,
            "restored_from": report.restored_from,
            "train_reward": report.train_reward or 0.0,
            "trainable_groups": report.trainable_groups,
            "groups": report.groups,
            "held_out": held_out,
            "served_step": report.served_step,
            "served": report.served_score,
            "decision": report.decision or report.outcome,
            "sampling_s": report.sampling_s,
            "train_s": report.training_s,
            "elapsed_s": elapsed,
        }
        self.steps.append(row)
        self._row(
            report.step,
            f"{row['train_reward']:.2f}",
            f"{report.trainable_groups}/{report.groups}",
            held_out,
            report.served_score,
            report.served_step,
            row["decision"],
            f"{report.sampling_s:.0f}s",
            f"{report.training_s:.0f}s",
        )
        if report.restored_from is not None:
            print(f"     (trained on a copy of step {report.restored_from}: checkpoint "
                  f"{report.checkpoint})", flush=True)  # fmt: skip

    def _row(self, step, reward, groups, held_out, served, served_step, decision, sample, train):
        served_text = "" if served is None else f"{served:.2f} ({served_step})"
        print(
            f"{step:>4} {reward:>12} {groups:>7} {held_out:>8.2f} {served_text:>13} "
            f"{decision:>9} {sample:>6} {train:>5} {time.monotonic() - self.started:>5.0f}s",
            flush=True,
        )


def summary_line(
    curve: list[tuple[int, float]], seconds: float, served: tuple[int, float | None] | None = None
) -> str:
    """``baseline -> final, best step, [served], time``: how `make demo` ends."""
    best_step, best = max(curve, key=lambda point: (point[1], -point[0]))
    serving = ""
    if served is not None and served[1] is not None:
        serving = f"; serving step {served[0]} ({served[1]:.2f})"
    return (
        f"held-out reward {curve[0][1]:.2f} -> {curve[-1][1]:.2f} "
        f"(best {best:.2f} at step {best_step}{serving}) in {seconds:.0f} s"
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
        tm, loop, curve = result["model"], result["loop"], result["curve"]
        served = (loop.state.promoted, loop.state.promoted_score)
        seconds = time.monotonic() - started
        print(
            f"\n{result['rollouts']} rollouts recorded, {tm.latest_step()} checkpoints; newest "
            f"{tm.ref}; agents are served {loop.served_ref} = step {served[0]}; reward curve: "
            f"{result['png']}; history: {loop.journal.path}"
        )
        if args.summary:
            summary = {"seed": args.seed, "lr": args.lr, "curve": curve, "served": served}
            summary |= {"steps": result["steps"], "seconds": seconds}
            Path(args.summary).write_text(json.dumps(summary))
        print(summary_line(curve, seconds, served))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4, help="RL steps (default 4)")
    parser.add_argument(
        "--groups", type=int, default=6, help="cities (groups of rollouts) a round (default 6)"
    )
    parser.add_argument("--group-size", type=int, default=8, help="rollouts per prompt (default 8)")
    parser.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="RL learning rate (default 1e-3; 0: the backend's, 5e-4)",
    )
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=3,
        help="rounds of groups a step samples while none has reward variance (default 3)",
    )
    parser.add_argument(
        "--min-trainable-groups",
        type=int,
        default=1,
        help="a step samples more rounds while fewer groups than this have rewards that differ "
        "(default 1)",
    )
    parser.add_argument("--summary", help="write the run's curve and timings to this JSON file")
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--harmful-step",
        type=int,
        default=None,
        metavar="N",
        help="train step N on corrupted (inverted) rewards, to watch the promotion gate keep "
        "it from agents (off by default)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="promote a checkpoint unless its held-out reward is this much below the served "
        "one's (default 0.05: about one of the 24 cities)",
    )
    parser.add_argument(
        "--max-steps-off-policy",
        type=int,
        default=0,
        help="sample step k+1 while step k trains, from a policy at most this many steps old "
        "(default 0: in turn; measured in bench/RESULTS.md)",
    )
    parser.add_argument(
        "--after-rejection",
        choices=("continue", "restore"),
        default="continue",
        help="after the gate rejects a checkpoint, train on from it (default), or from a copy "
        "of the served one ('restore')",
    )
    parser.add_argument("--name", default="weather-agent", help="the trained model's name")
    parser.add_argument(
        "--out",
        default=str(HERE.parent / "demo-output"),
        help="where the PNG, history and rollouts go",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
