"""The main job, `make demo`: rollouts through the trace hook, RL steps on the local backend, each
checkpoint evaluated and served only when the gate lets it through."""

from __future__ import annotations

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
async def test_a_harmful_step_is_kept_from_agents_and_a_later_good_one_served(backend, tmp_path):
    """`make demo DEMO_ARGS="--harmful-step 3 --groups 4 --after-rejection restore"`: step 3
    trains on inverted rewards; the newest checkpoint falls, `:production` stays where it was,
    and a later step, trained on good rewards again from a copy of the served checkpoint, is
    served.

    Runs are not bit-for-bit repeatable (the engine's batches depend on timing), and how far
    an inverted step throws the policy varies: measured 0.84 -> 0.61, 0.52 -> 0.15 (demo's
    backend), 0.88 -> 0.00 and 0.88 -> 0.79 (this test's). Trained on from a policy thrown to
    0.00, two good steps did not bring it back (a CI run: 0.00, 0.00); so after a rejection
    the loop goes back to the served checkpoint (`after_rejection="restore"`). The test
    asserts the fall, the gate's decision on every checkpoint against what it measured, the
    restore, and a promotion within two good steps after the harmful one."""
    demo = load_demo()
    args = demo.parse_args(
        ["--harmful-step", "3", "--groups", "4", "--steps", "5", "--seed", "0",
         "--tolerance", "0.1", "--after-rejection", "restore",
         "--out", str(tmp_path), "--name", "harmful-agent"]
    )  # fmt: skip
    result = await demo.train_loop(backend, args, time.monotonic())
    steps, tolerance = result["steps"], args.tolerance
    shown = [(s["step"], s["checkpoint"], s["held_out"], s["served_step"], s["decision"])
             for s in steps]  # fmt: skip
    before, harmful = steps[1], steps[2]
    assert harmful["held_out"] < before["held_out"], shown  # :latest fell
    served = {0: result["curve"][0][1]}  # what each served step scored (0: the baseline)
    serving = 0
    for step in steps:  # every decision is the gate's, on the scores it measured
        if step["decision"] in ("promoted", "rejected"):
            keep = step["held_out"] >= served[serving] - tolerance - 1e-9
            assert step["decision"] == ("promoted" if keep else "rejected"), shown
            if keep:
                serving, served[step["checkpoint"]] = step["checkpoint"], step["held_out"]
        assert step["served_step"] == serving, shown
    assert (
        harmful["decision"] == "rejected" or harmful["held_out"] >= before["held_out"] - tolerance
    )
    assert any(s["decision"] == "promoted" for s in steps[3:]), shown  # a good step served again
    if harmful["decision"] == "rejected":  # the next step trained on the served weights again
        assert steps[3]["restored_from"] == before["checkpoint"], shown
        assert steps[3]["checkpoint"] in (None, harmful["checkpoint"] + 2), shown  # the copy's next
    tm, loop = result["model"], result["loop"]
    assert tm.served_step() == serving
    # what `make demo` leaves behind: the rollouts, a served :production, the curve
    assert loop.served_ref == "wandb-artifact:///local/demo/harmful-agent:production"
    assert result["rollouts"] >= 5 * 4 * 8  # training rollouts (and cold-start rounds) kept
    assert result["png"].exists() and result["png"].stat().st_size > 1000
    assert any("loop/eval_score" in json.loads(line) for line in tm.history_path.open())
