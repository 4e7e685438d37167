"""The multi-turn LlamaIndex scenario's mechanics: two trainable model turns per run with the
tool's result between them (context, never loss), one RL step, the new checkpoint served."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import pytest

from wandb_serverless.local.trainer import Tokenization, rl_samples
from wandb_serverless.rollouts import Choice

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "llamaindex_rl.py"


def load_example():
    sys.path.insert(0, str(SCRIPT.parent))  # it imports the demo's summary line, as when run
    spec = importlib.util.spec_from_file_location("llamaindex_rl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["llamaindex_rl"] = module
    spec.loader.exec_module(module)
    return module


def test_the_reward_needs_the_looked_up_number():
    example = load_example()
    number = example.temperature_of("Paris")
    assert "." in number  # made up to a tenth of a degree: a guess is not the number
    assert example.reward(f"It is {number} °C in Paris.", "Paris") == 1.0
    assert example.reward(f"{number}", "Paris") == 1.0
    assert example.reward(f"1{number} degrees", "Paris") == 0.0
    assert example.reward(f"{number}5 degrees", "Paris") == 0.0
    assert example.reward("It is sunny.", "Paris") == 0.0


@pytest.mark.slow
async def test_a_run_trains_on_both_model_turns_with_the_tool_result_masked(
    backend, tokenizer, tmp_path, monkeypatch
):
    example = load_example()
    # the loop is under test here, not learning: vary the reward by the answer's length
    monkeypatch.setattr(example, "reward", lambda answer, city: float(len(answer) % 2))
    args = argparse.Namespace(
        steps=1,
        groups=1,
        group_size=6,
        max_rounds=2,
        temperature=1.0,
        seed=5,
        out=str(tmp_path),
        lr=None,
        tolerance=0.05,
        max_steps_off_policy=0,
        credit="run",
    )
    result = await example.train_loop(backend, args, time.monotonic())
    tm = result["model"]
    assert tm.latest_step() == 1 and tm.ref.endswith(":latest")

    store_groups = example.RolloutStore(tmp_path / "rollouts.db").groups()
    trajectories = [t for g in store_groups for t in g.trajectories]

    def turns_of(trajectory) -> list[int]:
        items = trajectory.messages_and_choices
        return [i for i, item in enumerate(items) if isinstance(item, Choice)]

    # the first turn must call a tool; a run can still end early (a call the agent rejects)
    two_turns = [t for t in trajectories if len(turns_of(t)) >= 2]
    assert len(two_turns) >= len(trajectories) / 2, [len(turns_of(t)) for t in trajectories]
    trajectory = two_turns[0]
    items, turns = trajectory.messages_and_choices, turns_of(trajectory)
    assert all(items[i].logprobs is not None for i in turns)
    between = items[turns[0] + 1 : turns[1]]
    assert any(isinstance(m, dict) and m["role"] == "tool" for m in between)
    tool_text = next(m["content"] for m in between if isinstance(m, dict))

    group = next(g for g in store_groups if trajectory in g.trajectories)
    group.trajectories[0].reward, group.trajectories[-1].reward = 1.0, 0.0
    samples, _ = rl_samples([group], Tokenization(tokenizer), {})
    generated = [
        item.model_extra["token_ids"]
        for t in group.trajectories
        for item in t.messages_and_choices
        if isinstance(item, Choice)
    ]
    # every loss span is exactly what the model generated: no tool, user or system token
    assert samples and all(s.ids[s.start :] in generated for s in samples)
    assert all(len(s.old_logprobs) == len(s.ids) - s.start for s in samples)
    answer = next(
        s for s in samples if s.ids[s.start :] == items[turns[1]].model_extra["token_ids"]
    )
    assert tool_text in tokenizer.decode(answer.ids[: answer.start])  # the result is context
