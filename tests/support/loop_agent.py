"""A learning loop in a process of its own, for tests that stop it with ``kill -9``.

    python loop_agent.py STATE_DIR MODEL_NAME STEPS   (LOOP_BASE_URL, LOOP_API_KEY set)

The agent is one ChatWandb call; a training rollout earns its answer's length parity (reward
variance in any group) and waits ``LOOP_SAMPLE_DELAY`` seconds, an evaluation returns the
score ``LOOP_SCORES`` (JSON: checkpoint -> score) gives its checkpoint after
``LOOP_EVAL_DELAY`` seconds: slow enough phases to stop it in.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from langchain_wandb import ChatWandb
from wandb_serverless import TrainableModel
from wandb_serverless.api import Client
from wandb_serverless.learning import LearningLoop, Sampling


def main() -> None:
    state_dir, name, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    base_url, api_key = os.environ["LOOP_BASE_URL"], os.environ["LOOP_API_KEY"]
    sample_delay = float(os.environ.get("LOOP_SAMPLE_DELAY", "0"))
    eval_delay = float(os.environ.get("LOOP_EVAL_DELAY", "0"))
    scores = {int(k): v for k, v in json.loads(os.environ.get("LOOP_SCORES", "{}")).items()}
    client = Client(api_key=api_key, base_url=base_url)
    base = client.base_models.list()[0]
    tm = TrainableModel(name, "resume", base, client=client, history_dir=state_dir, progress=False)

    async def play(city: str, sampling: Sampling) -> float:
        llm = ChatWandb(model=sampling.model, base_url=base_url, api_key=api_key,
                        temperature=1.0, max_tokens=6, seed=sampling.seed)  # fmt: skip
        reply = await llm.ainvoke(f"Name a place near {city}.")
        if sampling.evaluation:
            await asyncio.sleep(eval_delay)
            return scores.get(sampling.policy_step, 0.5)
        await asyncio.sleep(sample_delay)
        return float(len(reply.content) % 2)

    loop = LearningLoop(
        tm, play, train_scenarios=["Paris", "Oslo", "Rome"], eval_scenarios=["Lima", "Cairo"],
        group_size=4, groups_per_step=2, max_rounds=2, max_concurrent_rollouts=2,
        train_config={"learning_rate": 1e-4}, state_dir=state_dir, max_steps_off_policy=1,
    )  # fmt: skip
    loop.run(steps)


if __name__ == "__main__":
    main()
