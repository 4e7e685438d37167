"""Two trainable roles in one LangGraph graph, each its own model, trained from the same runs.

A **planner** (``ChatWandb(role="planner")``) reads the question and names the tool to use; an
**executor** (``ChatWandb(role="executor")``) is told the plan, calls a tool and answers. Each
role is a ``TrainableModel`` (two LoRA models on one base model) on the local backend. Every
run is recorded once, with the exact tokens of both roles' turns; each turn knows its role.

Rewards: the planner's turn is judged on its own (a step reward: 1 if the plan picks the
temperature tool, the one that can answer, and not the time tool), and the run is judged by the
answer (1 if it gives the looked-up number). ``store.groups(role="planner")`` gives the
planner's model its own turn with the executor's as context it never trains on, and the reverse
for the executor; each role's model trains one RL step a round on its own groups. Each role's
held-out reward (the plan's and the answer's, on cities never trained on) is reported before
and after.

    python examples/multi_agent.py [--steps 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import tempfile
import time
from pathlib import Path
from typing import Annotated, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode

from langchain_wandb import ChatWandb, RolloutCallbackHandler
from wandb_serverless import TrainableModel
from wandb_serverless.local import LocalBackend
from wandb_serverless.rollouts import RolloutStore, rollout

HERE = Path(__file__).resolve().parent
MODEL_CACHE = HERE.parent / ".cache" / "models"
TRAIN_CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Oslo"]
HELD_OUT_CITIES = ["Tokyo", "Cairo", "Lima", "Toronto", "Sydney", "Seoul"]
ROLES = ("planner", "executor")
PLANNER = (
    "You plan for a weather assistant that has two tools: one gives the temperature of a city, "
    "the other the local time. Which one answers the question? Reply with one word: "
    "temperature or time."
)
EXECUTOR = "You are a weather assistant. Plan: {plan}. Use a tool, then answer with its result."


def temperature_of(city: str) -> str:
    """A made-up temperature per city, to a tenth of a degree: no model can guess it."""
    tenths = 40 + int(hashlib.sha256(f"multi-agent:{city}".encode()).hexdigest(), 16) % 310
    return f"{tenths / 10:.1f}"


@tool
def get_temperature(city: str) -> str:
    """Look up the current temperature of a city, in degrees Celsius."""
    return f"{temperature_of(city.strip().title())} degrees Celsius in {city}."


@tool
def get_local_time(city: str) -> str:
    """Look up the current local time of a city."""
    return f"It is 14:05 in {city}."


class State(TypedDict):
    city: str
    plan: str
    messages: Annotated[list[AnyMessage], add_messages]


def build_graph(planner: ChatWandb, executor: ChatWandb):
    tools = [get_temperature, get_local_time]
    first, later = executor.bind_tools(tools, tool_choice="any"), executor.bind_tools(tools)

    async def plan(state: State) -> dict:
        question = f"What is the temperature in {state['city']}?"
        said = await planner.ainvoke([SystemMessage(PLANNER), HumanMessage(question)])
        return {"plan": str(said.content), "messages": [HumanMessage(question)]}

    async def execute(state: State) -> dict:
        called = any(m.type == "tool" for m in state["messages"])
        prompt = [SystemMessage(EXECUTOR.format(plan=state["plan"].strip()[:80])),
                  *state["messages"]]  # fmt: skip
        return {"messages": [await (later if called else first).ainvoke(prompt)]}

    def route(state: State) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    graph = StateGraph(State)
    graph.add_node("plan", plan)
    graph.add_node("execute", execute)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "execute")
    graph.add_conditional_edges("execute", route, ["tools", END])
    graph.add_edge("tools", "execute")
    return graph.compile()


def plan_reward(plan: str) -> float:
    """The planner's step: 1 if the plan picks the temperature tool (and not the time one)."""
    said = plan.lower()
    return 1.0 if "temperature" in said and "time" not in said else 0.0


def answer_reward(messages: list[AnyMessage], city: str) -> float:
    """The run: 1 if the final answer gives the looked-up temperature."""
    last = messages[-1]
    answer = str(last.content) if isinstance(last, AIMessage) and not last.tool_calls else ""
    number = re.escape(temperature_of(city))
    return 1.0 if re.search(rf"(?<![\d.]){number}(?!\d)", answer) else 0.0


class Agents:
    """Both roles' chat models, built from each model's newest checkpoint."""

    def __init__(self, backend: LocalBackend, models: dict[str, TrainableModel], seed: int):
        self.backend, self.models, self.seed = backend, models, seed

    def chat(self, role: str, temperature: float, seed: int) -> ChatWandb:
        return ChatWandb(
            model=self.models[role].ref, role=role, base_url=self.backend.base_url,
            api_key=self.backend.api_key, temperature=temperature, max_tokens=32, seed=seed,
        )  # fmt: skip

    async def run(self, city: str, seed: int, temperature: float, store=None, group=None):
        """One recorded run: (plan reward, answer reward)."""
        graph = build_graph(self.chat("planner", temperature, seed),
                            self.chat("executor", temperature, seed))  # fmt: skip
        handler = RolloutCallbackHandler()  # labels each turn with its LangGraph node
        async with rollout(group=group, store=store) as run:
            try:
                state = await graph.ainvoke(
                    {"city": city, "plan": "", "messages": []},
                    {"callbacks": [handler], "recursion_limit": 8},
                )
            except Exception as exc:  # a run that broke earns nothing
                run.log(f"agent failed: {type(exc).__name__}: {exc}")
                return 0.0, 0.0
            planned = plan_reward(state["plan"])
            run.reward_step("plan", planned)  # the planner's own turn, judged on its own
            run.reward = answer_reward(state["messages"], city)
        return planned, run.reward

    async def held_out(self, samples: int = 2) -> dict[str, float]:
        """Each role's held-out reward: the plan's and the answer's, T=1.0, seeded samples."""
        runs = [self.run(city, self.seed * 100 + s, 1.0) for city in HELD_OUT_CITIES
                for s in range(samples)]  # fmt: skip
        results = await asyncio.gather(*runs)
        return {
            "planner": sum(p for p, _ in results) / len(results),
            "executor": sum(a for _, a in results) / len(results),
        }


async def train(backend: LocalBackend, args: argparse.Namespace, out: Path) -> dict:
    client = backend.client()
    models = {
        role: TrainableModel(f"{role}-{args.seed}", "multi-agent", backend.model_id,
                             client=client, history_dir=out, progress=False)
        for role in ROLES
    }  # fmt: skip
    agents = Agents(backend, models, args.seed)
    store = RolloutStore(out / "rollouts.db")
    before = await agents.held_out()
    print(f"before: planner {before['planner']:.2f}, executor {before['executor']:.2f}")
    for step in range(1, args.steps + 1):
        names = [f"s{step}-{city}" for city in TRAIN_CITIES[: args.groups]]
        await asyncio.gather(*(
            agents.run(name.split("-", 1)[1], args.seed * 1000 + step * 100 + i, 1.0, store, name)
            for name in names for i in range(args.group_size)
        ))  # fmt: skip
        for role, model in models.items():  # the same runs, each role its own turns
            groups = store.groups(names=names, role=role)
            result = await asyncio.to_thread(model.train_rl, groups, {"learning_rate": args.lr})
            print(f"step {step}: {role} trained to checkpoint {result.step} "
                  f"({len(groups)} groups, {result.dropped_groups} without signal)")  # fmt: skip
    after = await agents.held_out()
    print(f"after {args.steps} steps: planner {after['planner']:.2f}, "
          f"executor {after['executor']:.2f}")  # fmt: skip
    return {"before": before, "after": after, "models": models, "store": store}


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as data_dir,
        LocalBackend.start(
            data_dir=data_dir, model_cache_dir=MODEL_CACHE, max_batch_size=64
        ) as backend,
    ):
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        await train(backend, args, out)
    print(f"done in {time.monotonic() - started:.0f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--groups", type=int, default=4, help="cities a step (default 4)")
    parser.add_argument("--group-size", type=int, default=6, help="runs a city (default 6)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE.parent / "demo-output" / "multi-agent"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
