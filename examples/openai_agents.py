"""OpenAI's Agents SDK (``openai-agents``) on the local backend: its runs recorded and trained.

The Agents SDK builds its own ``AsyncOpenAI`` client and calls chat completions itself; nothing
here wraps or replaces it. Inside ``rollout()`` every call it makes is recorded with the exact
tokens (``wandb_serverless.capture``: logprobs and token ids asked for, tool calls included).
A two-tool agent answers questions about cities; each run is rewarded (1 if the answer gives the
looked-up number), groups of runs train one RL step, and the new checkpoint serves the agent.

The SDK's default model API is the Responses API, which is not recorded (a warning says so):
the agent uses ``OpenAIChatCompletionsModel``, as for any OpenAI-compatible server.

    python examples/openai_agents.py [--groups 2] [--group-size 4]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import tempfile
import time
from pathlib import Path

import openai
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from wandb_serverless import TrainableModel
from wandb_serverless.local import LocalBackend
from wandb_serverless.rollouts import RolloutStore, rollout

HERE = Path(__file__).resolve().parent
MODEL_CACHE = HERE.parent / ".cache" / "models"
CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Oslo"]
INSTRUCTIONS = (
    "You are a weather assistant. You do not know any temperature yourself. Call "
    "get_temperature with the city, then reply with the temperature it returned."
)


def temperature_of(city: str) -> str:
    tenths = 40 + int(hashlib.sha256(f"openai-agents:{city}".encode()).hexdigest(), 16) % 310
    return f"{tenths / 10:.1f}"


@function_tool
def get_temperature(city: str) -> str:
    """Look up the current temperature of a city, in degrees Celsius."""
    return f"{temperature_of(city.strip().title())} degrees Celsius in {city}."


@function_tool
def get_local_time(city: str) -> str:
    """Look up the current local time of a city."""
    return f"It is 14:05 in {city}."


def reward(answer: str, city: str) -> float:
    number = re.escape(temperature_of(city))
    return 1.0 if re.search(rf"(?<![\d.]){number}(?!\d)", answer) else 0.0


def agent_for(client: openai.AsyncOpenAI, model: str, seed: int) -> Agent:
    return Agent(
        name="weather",
        instructions=INSTRUCTIONS,
        tools=[get_temperature, get_local_time],
        model=OpenAIChatCompletionsModel(model=model, openai_client=client),
        # the first turn must call a tool (the SDK resets tool_choice after a tool call)
        model_settings=ModelSettings(
            temperature=1.0, max_tokens=32, tool_choice="required", extra_args={"seed": seed}
        ),
    )


async def play(client, model: str, city: str, seed: int, store, group: str) -> float:
    """One recorded run of the agent; its reward."""
    async with rollout(group=group, store=store) as run:
        try:
            result = await Runner.run(
                agent_for(client, model, seed), f"What is the temperature in {city}?", max_turns=4
            )
            answer = str(result.final_output)
        except Exception as exc:  # a run that broke (too many turns, say) earns nothing
            answer = ""
            run.log(f"agent failed: {type(exc).__name__}: {exc}")
        run.reward = reward(answer, city)
    return run.reward


async def train(backend: LocalBackend, args: argparse.Namespace, out: Path) -> dict:
    set_tracing_disabled(True)  # the SDK's own traces go to OpenAI's servers: none here
    client = openai.AsyncOpenAI(base_url=backend.base_url, api_key=backend.api_key)
    tm = TrainableModel("agents-sdk", "openai-agents", backend.model_id,
                        client=backend.client(), history_dir=out, progress=False)  # fmt: skip
    store = RolloutStore(out / "rollouts.db")
    names = [f"{city}-{args.seed}" for city in CITIES[: args.groups]]
    rewards = await asyncio.gather(*(
        play(client, tm.ref, name.split("-")[0], args.seed * 100 + i, store, name)
        for name in names for i in range(args.group_size)
    ))  # fmt: skip
    groups = store.groups(names=names)
    turns = [len(t.choices()) for g in groups for t in g.trajectories]
    print(f"{len(rewards)} runs recorded, mean reward {sum(rewards) / len(rewards):.2f}, "
          f"{sum(turns) / max(1, len(turns)):.1f} trainable turns a run")  # fmt: skip
    result = tm.train_rl(groups, {"learning_rate": args.lr})
    print(f"trained: checkpoint {result.step} ({len(groups) - result.dropped_groups} groups "
          f"with signal); the agent now runs on {tm.ref}")  # fmt: skip
    check = await play(client, tm.ref, CITIES[0], 7, None, "served")
    print(f"a run on the new checkpoint: reward {check:.0f}")
    return {"model": tm, "store": store, "groups": groups, "result": result}


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as data_dir,
        LocalBackend.start(data_dir=data_dir, model_cache_dir=MODEL_CACHE) as backend,
    ):
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        await train(backend, args, out)
    print(f"done in {time.monotonic() - started:.0f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--groups", type=int, default=2, help="cities (default 2)")
    parser.add_argument("--group-size", type=int, default=4, help="runs a city (default 4)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE.parent / "demo-output" / "openai-agents"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
