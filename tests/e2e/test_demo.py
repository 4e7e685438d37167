"""A shortened main job: rollouts through the trace hook -> one RL step -> the checkpoint served."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def load_demo():
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo"] = module  # LangGraph resolves the State annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
async def test_shortened_demo_trains_one_step_and_serves_the_new_checkpoint(
    backend, oai, tmp_path, monkeypatch
):
    demo = load_demo()
    # The demo's reward pays only for the right call, which the base model makes in ~1-4% of
    # samples: a 16-rollout run often has no variance to learn from. This test is about the
    # loop (record -> RL job -> checkpoint served), so it scores by the answer's length parity,
    # which varies within any group of sampled answers.
    monkeypatch.setattr(
        demo, "reward", lambda messages, city: float(len(str(messages[-1].content)) % 2)
    )
    args = argparse.Namespace(
        steps=1,
        groups=2,
        group_size=8,
        lr=1e-3,
        max_rounds=1,
        temperature=0.7,
        seed=3,
        out=str(tmp_path),
        name="e2e-agent",
    )
    result = await demo.train_loop(backend, args, time.monotonic())
    tm = result["model"]
    assert result["rollouts"] == 16  # the training rollouts (evaluations are not stored)
    assert tm.latest_step() == 1, "the seeded rollouts should have reward variance"
    reply = oai.chat.completions.create(
        model=tm.ref, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.model == tm.ref == "wandb-artifact:///local/demo/e2e-agent:latest"
    assert tm.ref_at(1) in [m.id for m in oai.models.list()]
    assert result["png"].exists() and result["png"].stat().st_size > 1000
    history = [json.loads(line) for line in tm.history_path.read_text().splitlines()]
    assert any("loop/eval_score" in entry for entry in history)
    assert any(entry.get("train/num_groups_trainable", 0) >= 1 for entry in history)
    assert result["loop"].served_ref == "wandb-artifact:///local/demo/e2e-agent:production"


def test_the_demo_reward_pays_for_the_asked_city_not_the_placeholder():
    from langchain_core.messages import AIMessage, HumanMessage

    demo = load_demo()

    def called(args: dict) -> list:
        call = {"name": "get_weather", "args": args, "id": "c1"}
        return [HumanMessage("Weather in Paris?"), AIMessage("", tool_calls=[call])]

    assert demo.reward(called({"city": "Paris"}), "Paris") == 1.0
    assert demo.reward(called({"city": "london"}), "Paris") == 0.25
    assert demo.reward(called({"city": "<city>"}), "Paris") == 0.0
    assert demo.reward([HumanMessage("q"), AIMessage("<tool_call>get_weather")], "Paris") == 0.0


@pytest.mark.slow
async def test_a_harmful_step_is_kept_from_agents_and_the_next_good_one_served(backend, tmp_path):
    """`make demo DEMO_ARGS="--harmful-step 3 --groups 4"`: step 3 trains on inverted rewards.
    The newest checkpoint falls, `:production` stays where it was, and step 4, trained on good
    rewards again, is served. (Measured, demo's backend: 0.84 -> 0.61 -> 0.84 on seed 0,
    0.52 -> 0.15 -> 0.91 on seed 1; this test's backend: 0.88 -> 0.00 -> 0.84. With 6 groups
    the policy is confident by step 3 and one inverted step moved its greedy answers by one
    city at most.) The recovered step lands within a city or two of the served one, so the
    test's tolerance is 0.1 (the demo's 0.05 promoted it too, by 0.01)."""
    demo = load_demo()
    args = demo.parse_args(
        ["--harmful-step", "3", "--groups", "4", "--tolerance", "0.1", "--seed", "0",
         "--out", str(tmp_path), "--name", "harmful-agent"]
    )  # fmt: skip
    result = await demo.train_loop(backend, args, time.monotonic())
    before, harmful, recovered = result["steps"][1:]
    assert harmful["held_out"] < before["held_out"] - args.tolerance  # :latest fell
    assert harmful["decision"] == "rejected" and harmful["served_step"] == before["served_step"]
    assert (recovered["decision"], recovered["served_step"]) == ("promoted", 4)
    assert result["loop"].model.served_step() == 4
    decisions = {r["checkpoint"]: r["event"] for r in result["loop"].history()
                 if r["event"] in ("promoted", "rejected")}  # fmt: skip
    assert (decisions[3], decisions[4]) == ("rejected", "promoted")
