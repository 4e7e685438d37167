"""The learning loop's pure parts: the promotion gate, planning, the journal and what it adds
up to, staleness, settings, the rollout runner's failures, costs. No server: seconds."""

from __future__ import annotations

import asyncio
import json
import time
import types

import pytest

from wandb_serverless.learning import LearningLoop, LoopLockedError, StepReport, decide
from wandb_serverless.learning.journal import Journal, exclusive, load_state
from wandb_serverless.learning.loop import fresh_groups
from wandb_serverless.learning.report import estimate_price
from wandb_serverless.learning.sampling import Outcome, Runner, plan_round, trained_tokens
from wandb_serverless.prices import PRICES, price_of
from wandb_serverless.rollouts import RolloutStore, Trajectory, TrajectoryGroup
from wandb_serverless.rollouts.recorder import Rollout, make_choice
from wandb_serverless.usage import judging, metered, record_usage

# -- the gate -------------------------------------------------------------------------------


def test_a_checkpoint_within_the_tolerance_is_promoted_and_one_below_it_is_not():
    assert decide(0.90, 0.94, 0.05)[0] is True
    assert decide(0.89, 0.94, 0.05)[0] is True  # worse by exactly the tolerance
    assert decide(0.88, 0.94, 0.05)[0] is False
    assert decide(0.94, 0.94, 0.0)[0] is True  # as good as the served one
    ok, reason = decide(0.5, 0.94, 0.05)
    assert not ok and reason == "0.500 < 0.940 - 0.05"


def test_a_failed_evaluation_is_never_promoted_and_the_first_is_always():
    ok, reason = decide(None, 0.2, 0.05)
    assert not ok and "evaluation failed" in reason
    assert decide(0.0, None, 0.0) == (True, "nothing was served before")


# -- planning --------------------------------------------------------------------------------


def test_a_round_plans_the_same_groups_and_seeds_every_time_and_differs_per_step_and_round():
    first = plan_round("run1", 7, 3, 0, scenarios=30, groups=4, group_size=8)
    assert first == plan_round("run1", 7, 3, 0, scenarios=30, groups=4, group_size=8)
    assert first != plan_round("run1", 7, 4, 0, scenarios=30, groups=4, group_size=8)
    assert first != plan_round("run1", 7, 3, 1, scenarios=30, groups=4, group_size=8)
    assert len({g.scenario_index for g in first}) == 4  # distinct scenarios while there are enough
    assert [len(g.seeds) for g in first] == [8] * 4
    assert first[0].name == "run1-s3-r0-g0" and first[0].rollout_id(5) == "run1-s3-r0-g0-5"


def test_more_groups_than_scenarios_reuses_scenarios():
    planned = plan_round("r", 0, 1, 0, scenarios=2, groups=5, group_size=2)
    assert len(planned) == 5 and {g.scenario_index for g in planned} <= {0, 1}


# -- staleness -------------------------------------------------------------------------------


def _group(name: str, rewards: list[float], policy: int | None = None) -> TrajectoryGroup:
    trajectories = [
        Trajectory(reward=r, initial_policy_version=policy, metadata={"group": name})
        for r in rewards
    ]
    return TrajectoryGroup(trajectories=trajectories, metadata={"group": name})


def test_groups_sampled_beyond_the_bound_are_dropped_and_counted():
    groups = [_group("a", [0, 1], 5), _group("b", [0, 1], 4), _group("c", [0, 1], 3)]
    fresh, dropped = fresh_groups(groups, base=5, max_steps_off_policy=1)
    assert [g.metadata["group"] for g in fresh] == ["a", "b"] and dropped == 1
    assert fresh_groups(groups, base=5, max_steps_off_policy=0)[1] == 2
    # a group is as old as its oldest trajectory (a group topped up after a restart)
    mixed = TrajectoryGroup(
        trajectories=[Trajectory(initial_policy_version=5), Trajectory(initial_policy_version=3)]
    )
    assert fresh_groups([mixed], base=5, max_steps_off_policy=1)[1] == 1


# -- the journal -----------------------------------------------------------------------------


def test_a_record_torn_by_a_kill_is_ignored_and_the_next_one_kept(tmp_path):
    journal = Journal(tmp_path / "history.jsonl")
    journal.append("start", run_id="r1")
    with journal.path.open("a") as handle:
        handle.write('{"event": "trained", "step": 1, "checkp')  # kill -9 mid-write
    journal.append("skipped", step=1, reason="x")
    events = [r["event"] for r in journal.records()]
    assert events == ["start", "skipped"]


def test_the_state_follows_promotions_rejections_and_rollbacks(tmp_path):
    journal = Journal(tmp_path / "h.jsonl")
    journal.append("start", run_id="r1")
    journal.append("evaluated", checkpoint=0, score=0.1)
    journal.append("promoted", checkpoint=0, by="baseline")
    for step, score in [(1, 0.5), (2, 0.2), (3, 0.6)]:
        journal.append("sampled", step=step, policy_step=step - 1, groups=[f"g{step}"])
        journal.append("training", step=step, base_step=step - 1, groups=[f"g{step}"])
        journal.append("job", step=step, job_id=f"j{step}")
        journal.append("trained", step=step, checkpoint=step)
        journal.append("evaluated", checkpoint=step, score=score)
        journal.append("rejected" if step == 2 else "promoted", checkpoint=step)
    state = load_state(journal)
    assert (state.run_id, state.promoted, state.promoted_score) == ("r1", 3, 0.6)
    assert list(state.earlier) == [0, 1] and state.undecided == [] and state.done_through == 3
    assert state.sampled == {} and state.in_flight is None and state.latest == 3
    journal.append("rollback", **{"from": 3, "to": 1})
    state = load_state(journal)
    assert (state.promoted, state.promoted_score, list(state.earlier)) == (1, 0.5, [0])


def test_a_copy_of_the_served_checkpoint_is_the_newest_with_its_score(tmp_path):
    journal = Journal(tmp_path / "h.jsonl")
    journal.append("evaluated", checkpoint=1, score=0.8)
    journal.append("promoted", checkpoint=1, by="loop")
    journal.append("trained", step=2, checkpoint=2)
    journal.append("evaluated", checkpoint=2, score=0.1)
    journal.append("rejected", checkpoint=2)
    state = load_state(journal)
    assert (state.latest, state.last_rejected) == (2, 2)  # the newest was rejected
    journal.append("restored", step=3, checkpoint=3, source=1, rejected=2)
    state = load_state(journal)
    assert (state.latest, state.last_rejected, state.score(3)) == (3, 2, 0.8)
    assert state.promoted == 1  # a copy is trained on, never served by itself
    # its groups, sampled from 1, are as fresh for the copy as for 1 (also after a restart)
    assert (state.trained_on(3), state.trained_on(2)) == (1, 2)


def test_restoring_after_a_rejection_needs_the_local_backend(tmp_path):
    async def play(scenario, sampling):
        return 0.0

    hosted = types.SimpleNamespace(hosted=True, base_model="b")
    with pytest.raises(ValueError, match="after_rejection='restore' needs the local backend"):
        LearningLoop(hosted, play, train_scenarios=["a"], eval_scenarios=["b"],  # type: ignore[arg-type]
                     state_dir=tmp_path, after_rejection="restore", max_steps_off_policy=0)  # fmt: skip


def test_a_stop_mid_step_leaves_what_resuming_needs(tmp_path):
    journal = Journal(tmp_path / "h.jsonl")
    journal.append("start", run_id="r1")
    journal.append("sampled", step=1, policy_step=0, groups=["g1"])
    journal.append("training", step=1, base_step=0, groups=["g1"])
    journal.append("job", step=1, job_id="j1")
    journal.append("sampled", step=2, policy_step=0, groups=["g2"])
    state = load_state(journal)
    assert state.in_flight is not None and state.in_flight.job_id == "j1"
    assert state.in_flight.base_step == 0 and sorted(state.sampled) == [1, 2]
    journal.append("trained", step=1, checkpoint=1)
    state = load_state(journal)
    assert state.in_flight is None and sorted(state.sampled) == [2] and state.undecided == [1]


def test_a_second_loop_on_one_state_directory_is_refused(tmp_path):
    with exclusive(tmp_path), pytest.raises(LoopLockedError, match="another process"):  # noqa: SIM117
        with exclusive(tmp_path):
            pass
    with exclusive(tmp_path):  # released when the first one ended
        pass


# -- settings --------------------------------------------------------------------------------


def _loop(tmp_path, **overrides):
    async def play(scenario, sampling):
        return 0.0

    settings = {"train_scenarios": ["a"], "eval_scenarios": ["b"], "state_dir": tmp_path}
    model = types.SimpleNamespace(hosted=False, base_model="b")  # what construction reads
    return LearningLoop(model, play, **(settings | overrides))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"eval_scenarios": []}, "eval_scenarios is empty"),
        ({"train_scenarios": []}, "train_scenarios is empty"),
        ({"group_size": 1}, "group_size must be at least 2"),
        ({"groups_per_step": 0}, "groups_per_step must be a whole number >= 1"),
        ({"max_steps_off_policy": -1}, "max_steps_off_policy must be a whole number >= 0"),
        ({"sample_from": "best"}, "sample_from must be 'latest' or 'promoted'"),
        ({"alias": "step3"}, "alias 'step3' is not"),
        ({"tolerance": -0.1}, "tolerance must be a number >= 0"),
        ({"rollout_timeout": 0}, "rollout_timeout must be > 0"),
        ({"eval_fn": "not a function"}, "eval_fn must be callable"),
        ({"role": ""}, "role must be a role's name"),
        ({"step_discount": 1.5}, "step_discount must be a number from 0 to 1"),
        ({"after_rejection": "rewind"}, "after_rejection must be 'continue' or 'restore'"),
        ({"after_rejection": "restore"}, "set max_steps_off_policy=0"),  # the default is 1
    ],
)
def test_bad_settings_are_errors_that_name_them(tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        _loop(tmp_path, **setting)


# -- one rollout -----------------------------------------------------------------------------


def _run_one(tmp_path, fn, timeout=5.0):
    store = RolloutStore(tmp_path / "r.db")
    outcome = Outcome()
    run = Rollout(group="g", store=store, id="rollout-1")

    async def go():
        await Runner(fn, timeout, 4).one("scenario", run, outcome, model="m", seed=1, step=1,
                                         policy_step=0, evaluation=False)  # fmt: skip

    asyncio.run(go())
    return outcome, store


def test_a_rollout_function_that_raises_is_a_stored_counted_failure(tmp_path):
    async def broken(scenario, sampling):
        raise RuntimeError("the agent broke")

    outcome, store = _run_one(tmp_path, broken)
    assert (outcome.failed, outcome.rewards) == (1, [])
    assert outcome.errors == {"RuntimeError: the agent broke": 1}
    (group,) = store.groups()
    assert group.trajectories == [] and group.exceptions[0]["type"] == "RuntimeError"


def test_a_rollout_function_that_hangs_times_out_and_is_counted(tmp_path):
    async def hangs(scenario, sampling):
        await asyncio.sleep(60)

    started = time.monotonic()
    outcome, store = _run_one(tmp_path, hangs, timeout=0.2)
    assert time.monotonic() - started < 5
    assert (outcome.failed, outcome.timed_out) == (1, 1)
    assert "rollout_timeout" in next(iter(outcome.errors))
    assert store.groups()[0].exceptions[0]["type"] == "TimeoutError"


def test_a_reward_that_is_not_a_number_is_a_clear_failure(tmp_path):
    outcome, _ = _run_one(tmp_path, lambda scenario, sampling: "good")
    assert outcome.failed == 1 and "return the reward (a finite number)" in next(
        iter(outcome.errors)
    )

    def sets_nan(scenario, sampling):
        sampling.rollout.reward = float("nan")  # would make the training job a 422

    outcome, store = _run_one(tmp_path / "nan", sets_nan)
    assert outcome.failed == 1 and store.groups()[0].trajectories == []
    assert _run_one(tmp_path / "bool", lambda scenario, sampling: True)[0].rewards == [1.0]


def test_a_sync_rollout_function_runs_in_its_rollout_and_may_set_the_reward_itself(tmp_path):
    seen = []

    def play(scenario, sampling):
        seen.append((scenario, sampling.model, sampling.seed, sampling.rollout.id))
        sampling.rollout.reward = 0.75

    outcome, store = _run_one(tmp_path, play)
    assert outcome.rewards == [0.75] and seen == [("scenario", "m", 1, "rollout-1")]
    (trajectory,) = store.query(group="g")
    assert trajectory.reward == 0.75 and trajectory.initial_policy_version is None


def test_a_rollout_stopped_from_outside_is_not_stored(tmp_path):
    store = RolloutStore(tmp_path / "r.db")
    started = asyncio.Event()

    async def slow(scenario, sampling):
        started.set()
        await asyncio.sleep(60)

    async def go():
        runner = Runner(slow, None, 1)
        task = asyncio.create_task(
            runner.one(
                "s",
                Rollout(group="g", store=store),
                Outcome(),
                model="m",
                seed=1,
                step=1,
                policy_step=0,
                evaluation=False,
            )
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert store.count() == 0  # sampled again after a restart, not kept as a failure


# -- what a step cost ------------------------------------------------------------------------


def test_the_meter_counts_calls_by_model_and_judge_calls_apart():
    with metered() as meter:
        record_usage("wandb-artifact:///e/p/agent:step3", 100, 10)
        record_usage("wandb-artifact:///e/p/agent:step4", 50, 5)
        with judging():
            record_usage("openai/gpt-oss-20b", 1000, 20)
    record_usage("m", 1, 1)  # no meter open: counted nowhere
    model, judge = meter.total("model"), meter.total("judge")
    assert (model.calls, model.prompt_tokens, model.completion_tokens) == (2, 150, 15)
    assert (judge.calls, judge.prompt_tokens, judge.completion_tokens) == (1, 1000, 20)
    assert ("model", "e/p/agent") in meter.counts  # every step of a checkpoint bills alike


def test_the_price_estimate_uses_the_base_models_rates_for_its_checkpoints():
    rows = [
        ["model", "e/p/agent", 2, 1_000_000, 100_000],
        ["judge", "openai/gpt-oss-20b", 1, 0, 1_000_000],
    ]
    price = estimate_price(rows, "e/p/agent", "OpenPipe/Qwen3-14B-Instruct")
    qwen = price_of("OpenPipe/Qwen3-14B-Instruct")
    assert qwen is not None
    assert price == pytest.approx(qwen.input_per_million + 0.1 * qwen.output_per_million + 0.20)
    assert estimate_price([["model", "unknown/model", 1, 1, 1]], "x", "y") is None
    assert all(p.source for p in PRICES.values())


def test_tokens_trained_are_the_completion_tokens_of_turns_with_logprobs():
    turn = make_choice(
        {"content": "hi"},
        logprobs={"content": [{"token": "h", "logprob": -1.0, "top_logprobs": []}]},
        token_ids=[5, 6, 7],
    )
    group = TrajectoryGroup(
        trajectories=[Trajectory(messages_and_choices=[{"role": "user", "content": "q"}, turn])] * 2
    )
    assert trained_tokens([group]) == 6


def test_a_step_report_is_a_json_record_a_metric_set_and_one_line():
    report = StepReport(step=2, outcome="trained", checkpoint=2, policy_step=1, rollouts=32,
                        prompt_tokens=1000, completion_tokens=200, tokens_trained=180,
                        eval_score=0.9, served_step=2, served_score=0.9, decision="promoted")  # fmt: skip
    assert json.loads(json.dumps(report.record()))["tokens_trained"] == 180
    assert report.metrics()["loop/completion_tokens"] == 200.0
    line = report.line(0.05)
    assert "32 rollouts from step 1" in line and "checkpoint 2" in line and "promoted" in line


def test_sampling_follows_the_served_checkpoint_only_within_the_bound(tmp_path):
    loop = _loop(tmp_path, sample_from="promoted", max_steps_off_policy=1)
    loop.state.latest, loop.state.promoted = 5, 4
    assert loop._sampling_policy() == 4  # one step behind the newest: within the bound
    loop.state.promoted = 3
    assert loop._sampling_policy() == 5  # two behind: the newest instead
    latest = _loop(tmp_path / "other", max_steps_off_policy=1)
    latest.state.latest, latest.state.promoted = 5, 4
    assert latest._sampling_policy() == 5
