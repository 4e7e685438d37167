"""A multi-turn LlamaIndex agent that learns from its own runs, on the local backend.

A ``FunctionAgent`` (WandbLLM) with two tools must look a city's temperature up and then answer
with it: the number is made up per city, so no model knows it without the tool. Each
run is recorded with its exact tokens (RolloutEventHandler installed; WandbLLM records its own
calls inside ``rollout()``): two trainable model turns, the call and the answer, with the
tool's result between them as context only (never in the loss). The reward is read from the
final answer; groups of runs train RL steps; the newest checkpoint serves the agent, which is
evaluated on held-out cities (2 samples each at the agent's temperature) after every step.

The agent samples at T=1.0, where the base model gets the tool, the city and the number all
right in a third of its runs (at T=0.7 in two thirds, leaving too little room to show +0.3),
and the RL jobs use learning rate 1e-3 (measured by hand on seeds 0-2: the backend's 5e-4 rose
by 0.17-0.42 in 4 steps, 1e-3 by 0.42-0.46; `bench/bench_learning.py --sweep` reruns both).

    python examples/llamaindex_rl.py [--seed 0] [--steps 4] [--credit step]

``--credit step`` also rewards the first turn on its own (the right tool for the right city),
a step reward: training then gives each turn its return (``bench/bench_step_rewards.py``
compares the two on three seeds).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import tempfile
import time
import uuid
from pathlib import Path

from demo import summary_line  # the demo's final line, which bench/bench_learning.py reads
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.tools import FunctionTool
from llama_index.llms.wandb import RolloutEventHandler, WandbLLM

from wandb_serverless import TrainableModel
from wandb_serverless.learning import LearningLoop, Sampling, StepReport
from wandb_serverless.local import LocalBackend
from wandb_serverless.rollouts import Choice, Rollout, RolloutStore

HERE = Path(__file__).resolve().parent
MODEL_CACHE = HERE.parent / ".cache" / "models"
TRAIN_CITIES = [
    "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Warsaw", "Lisbon", "Dublin", "Oslo",
    "Stockholm", "Helsinki", "Athens", "Budapest", "Brussels", "Amsterdam", "Copenhagen", "Zurich",
    "Munich", "Milan", "Barcelona", "Porto", "Krakow", "Seville", "Lyon", "Hamburg",
]  # fmt: skip
HELD_OUT_CITIES = [
    "Tokyo", "Cairo", "Lima", "Toronto", "Sydney", "Nairobi", "Seoul", "Chicago", "Mumbai",
    "Santiago", "Boston", "Denver",
]  # fmt: skip
SYSTEM = (
    "You are a weather assistant. You do not know any temperature yourself. Call "
    "get_temperature with the city, then reply with the temperature it returned."
)
QUESTION = "What is the temperature in {city} right now?"
MAX_TOKENS = 32
EVAL_SAMPLES = 2  # per held-out city, at the training temperature


def temperature_of(city: str) -> str:
    """A made-up temperature (4.0-34.9 °C), fixed per city, that no model can know or guess."""
    tenths = 40 + int(hashlib.sha256(f"llamaindex-rl:{city}".encode()).hexdigest(), 16) % 310
    return f"{tenths / 10:.1f}"


def get_temperature(city: str) -> str:
    """Look up the current temperature of a city, in degrees Celsius."""
    known = {c.lower(): c for c in TRAIN_CITIES + HELD_OUT_CITIES}
    name = known.get(city.strip().lower())
    if name is None:
        return f"No data for {city!r}."
    return f"{temperature_of(name)} degrees Celsius in {name}."


def get_local_time(city: str) -> str:
    """Look up the current local time of a city."""
    return f"It is 14:05 in {city}."


TOOLS = [
    FunctionTool.from_defaults(fn=get_temperature),
    FunctionTool.from_defaults(fn=get_local_time),
]


def reward(answer: str, city: str) -> float:
    """1.0: the final answer states the looked-up temperature; 0 otherwise (a guess cannot be
    right: the numbers are made up, to a tenth of a degree)."""
    number = re.escape(temperature_of(city))
    return 1.0 if re.search(rf"(?<![\d.]){number}(?!\d)", answer) else 0.0


def agent_for(backend: LocalBackend, model: str, temperature: float, seed: int | None):
    llm = WandbLLM(
        model=model,
        base_url=backend.base_url,
        api_key=backend.api_key,
        temperature=temperature,
        max_tokens=MAX_TOKENS,
        seed=seed,
    )
    # the first turn must call a tool, either of the two: which one, and with what, is learnt
    return FunctionAgent(tools=TOOLS, llm=llm, system_prompt=SYSTEM, initial_tool_choice="required")


def tool_step_reward(run: Rollout, city: str) -> float | None:
    """The first turn judged on its own: 1.0 if it called get_temperature for the city, 0.0
    for any other call (the wrong tool, or the wrong city, spoils the run); None if the run
    made no turn."""
    if not run.calls or not run.calls[0].exact():
        return None
    choice = run.calls[0].choice
    message = choice.message.model_dump() if isinstance(choice, Choice) else choice["message"]
    for call in message.get("tool_calls") or []:  # (a turn without exact tokens: None)
        function = call["function"]
        if function["name"] == "get_temperature" and city.lower() in function["arguments"].lower():
            return 1.0
    return 0.0


def play_fn(backend: LocalBackend, temperature: float, credit: str = "run"):
    """The rollout function the loop runs: one agent run on ``sampling.model`` at the agent's
    temperature with the loop's seed (evaluation too: 2 seeded samples per held-out city).
    With ``credit="step"`` the first turn (the tool call) is also rewarded on its own
    (``Rollout.reward_turn``); the run's reward, the answer's, is the same in both."""

    async def play(city: str, sampling: Sampling) -> float:
        agent = agent_for(backend, sampling.model, temperature, sampling.seed)
        try:
            answer = str(await agent.run(QUESTION.format(city=city), max_iterations=4))
        except Exception as exc:  # a run that broke (e.g. too many tool calls) earns nothing
            answer = f"error: {type(exc).__name__}"
        step = tool_step_reward(sampling.rollout, city) if credit == "step" else None
        if step is not None:
            sampling.rollout.reward_turn(step, 0)
        return reward(answer, city)

    return play


def trainable_turns(store: RolloutStore, names: list[str]) -> list[int]:
    """Model turns with exact tokens per recorded trajectory of these groups."""
    return [
        sum(isinstance(i, Choice) and i.logprobs is not None for i in t.messages_and_choices)
        for g in store.groups(names=names)
        for t in g.trajectories
    ]


async def train_loop(backend: LocalBackend, args: argparse.Namespace, started: float) -> dict:
    """The library's learning loop: each checkpoint is evaluated while the next step's rollouts
    sample from it (one engine batch for both: the engine's throughput grows with the batch),
    and served as ``:production`` only when it is not worse than the served one."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tm = TrainableModel(
        "temperature-agent", "demo", backend.model_id, client=backend.client(),
        history_dir=out, progress=False,
    )  # fmt: skip
    store = RolloutStore(out / "rollouts.db")
    handler = RolloutEventHandler(store=store).install()
    loop = LearningLoop(
        tm,
        play_fn(backend, args.temperature, args.credit),
        train_scenarios=TRAIN_CITIES,
        eval_scenarios=HELD_OUT_CITIES,
        group_size=args.group_size,
        groups_per_step=args.groups,
        max_rounds=args.max_rounds,
        eval_samples=EVAL_SAMPLES,
        tolerance=args.tolerance,
        max_steps_off_policy=args.max_steps_off_policy,
        train_config={"learning_rate": args.lr} if args.lr else None,  # 0/None: the backend's
        state_dir=out / f"loop-{uuid.uuid4().hex[:8]}",
        store=store,
        seed=args.seed,
        progress=False,
    )
    curve: list[tuple[int, float]] = []
    steps: list[dict] = []
    print(
        f"\n{'step':>4} {'train reward':>12} {'groups':>7} {'turns':>6} {'held-out':>9} "
        f"{'served':>8} {'total':>6}"
    )

    def report(step: StepReport) -> None:
        if not curve:
            curve.append((0, loop.state.score(0) or 0.0))
            print(f"{0:>4} {'':>12} {'':>7} {'':>6} {curve[0][1]:>9.2f} {'0':>8}")
        held_out = step.eval_score if step.checkpoint is not None else curve[-1][1]
        curve.append((step.step, held_out or 0.0))
        sampled = next(
            r for r in loop.history() if r["event"] == "sampled" and r["step"] == step.step
        )
        turns = trainable_turns(store, sampled["groups"])
        elapsed = time.monotonic() - started
        steps.append({
            "step": step.step, "train_reward": step.train_reward or 0.0, "held_out": curve[-1][1],
            "trainable_groups": step.trainable_groups, "groups": step.groups,
            "trainable_turns": sum(turns) / max(1, len(turns)), "served_step": step.served_step,
            "elapsed_s": elapsed,
        })  # fmt: skip
        print(
            f"{step.step:>4} {steps[-1]['train_reward']:>12.2f} "
            f"{step.trainable_groups:>4}/{step.groups:<2} {steps[-1]['trainable_turns']:>6.1f} "
            f"{curve[-1][1]:>9.2f} {step.served_step!s:>8} {elapsed:>5.0f}s",
            flush=True,
        )

    loop.on_step = report
    try:
        await loop.arun(args.steps)
    finally:
        handler.uninstall()
    return {"model": tm, "loop": loop, "curve": curve, "steps": steps}


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as data_dir,
        LocalBackend.start(
            data_dir=data_dir, model_cache_dir=MODEL_CACHE, max_batch_size=64
        ) as backend,
    ):
        result = await train_loop(backend, args, started)
    loop = result["loop"]
    served = (loop.state.promoted, loop.state.promoted_score)
    curve, seconds = result["curve"], time.monotonic() - started
    if args.summary:
        summary = {"seed": args.seed, "curve": curve, "served": served}
        Path(args.summary).write_text(
            json.dumps(summary | {"steps": result["steps"], "seconds": seconds})
        )
    print(summary_line(curve, seconds, served))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--groups", type=int, default=4, help="cities per round (default 4)")
    parser.add_argument("--group-size", type=int, default=6, help="runs per city (default 6)")
    parser.add_argument("--max-rounds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="RL learning rate (default 1e-3; 0: the backend's)"
    )
    parser.add_argument("--tolerance", type=float, default=0.05, help="the promotion gate's")
    parser.add_argument(
        "--credit",
        choices=["run", "step"],
        default="run",
        help="run: the answer's reward only (default); step: the tool call rewarded too",
    )
    parser.add_argument(
        "--max-steps-off-policy",
        type=int,
        default=0,
        help="sample step k+1 while step k trains (default 0: in turn)",
    )
    parser.add_argument("--out", default=str(HERE.parent / "demo-output" / "llamaindex"))
    parser.add_argument("--summary", help="write the curve and timings to this JSON file")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
