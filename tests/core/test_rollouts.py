"""The recorder's merge rules, the rollout context, and the durable store."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from wandb_serverless.rollouts import (
    LLMCall,
    RolloutStore,
    Trajectory,
    TrajectoryGroup,
    current_rollout,
    rollout,
)
from wandb_serverless.rollouts.recorder import make_choice, merge_calls

SYSTEM = {"role": "system", "content": "be brief"}
USER = {"role": "user", "content": "weather in Paris?"}
LOGPROBS = {"content": [{"token": "token_id:5", "logprob": -0.1, "bytes": [1], "top_logprobs": []}]}


def turn(content=None, calls=None, logprobs=LOGPROBS):
    body = {"content": content}
    if calls:
        body["tool_calls"] = [
            {
                "id": c,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
            for c in calls
        ]
    return make_choice(
        body,
        finish_reason="tool_calls" if calls else "stop",
        logprobs=logprobs,
        token_ids=[5],
        prompt_token_ids=[1, 2],
    )


def test_calls_that_extend_a_conversation_merge_into_one_history():
    first = turn(calls=["c1"])
    tool = {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    calls = [
        LLMCall([SYSTEM, USER], None, first),
        LLMCall(
            [
                SYSTEM,
                USER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": first["message"]["tool_calls"],
                },
                tool,
            ],
            None,
            turn("It is sunny."),
        ),
    ]
    main, others = merge_calls(calls)
    assert [
        type(i).__name__ if not isinstance(i, dict) else i["role"]
        for i in main.messages_and_choices
    ] == ["system", "user", "Choice", "tool", "Choice"]
    assert others == []


def test_side_conversations_become_additional_histories():
    judge = LLMCall([{"role": "system", "content": "you judge"}, USER], None, turn("0.9"))
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    main, others = merge_calls(
        [
            LLMCall([SYSTEM, USER], tools, turn("hi")),
            judge,
            LLMCall([SYSTEM, USER], None, turn("other tools")),
        ]
    )
    assert main.tools == tools and len(others) == 2
    assert others[0].messages()[0]["content"] == "you judge"


def test_turns_without_logprobs_are_context_not_trainable():
    trajectory = Trajectory(messages_and_choices=[USER, turn("hi", logprobs=None)])
    assert trajectory.messages_and_choices[-1] == {"role": "assistant", "content": "hi"}
    assert not trajectory.is_trainable()


def test_rollout_context_collects_reward_metrics_logs_and_exceptions(tmp_path):
    store = RolloutStore(tmp_path / "r.db")
    with pytest.raises(ValueError), rollout(group="g", metadata={"task": 3}, store=store) as run:
        assert current_rollout() is run
        run.add_call(LLMCall([USER], None, turn("hi")))
        run.reward, run.metrics["steps"] = 0.5, 2
        run.log("started")
        raise ValueError("tool crashed")
    assert current_rollout() is None
    (saved,) = store.query(group="g")
    assert saved.reward == 0.5 and saved.metrics == {"steps": 2} and saved.metadata["task"] == 3
    assert (
        saved.logs == ["started", "ValueError: tool crashed"]
        and saved.metadata["exception_type"] == "ValueError"
    )
    assert store.groups()[0].exceptions[0]["type"] == "ValueError"


def test_a_failed_rollout_goes_to_its_groups_exceptions_only(tmp_path):
    store = RolloutStore(tmp_path / "r.db")
    for reward in (1.0, 0.0):
        with rollout(group="g", store=store) as run:
            run.add_call(LLMCall([USER], None, turn("hi")))
            run.reward = reward
    with pytest.raises(RuntimeError), rollout(group="g", store=store) as run:
        run.add_call(LLMCall([USER], None, turn("hi")))
        raise RuntimeError("tool crashed")
    (group,) = store.groups()
    assert group.rewards == [1.0, 0.0]  # not [1.0, 0.0, 0.0]: the failure would skew advantages
    assert [e["type"] for e in group.exceptions] == ["RuntimeError"]


def test_a_malformed_model_turn_is_dropped_and_the_rest_is_saved(tmp_path):
    from wandb_serverless.rollouts.recorder import RECORDING_GUARD

    store = RolloutStore(tmp_path / "r.db")
    errors = RECORDING_GUARD.errors
    with rollout(group="g", store=store):
        current_rollout().add_call(LLMCall([USER], None, turn("hi")))
        bad = turn("ok", logprobs={"content": "not a list of tokens"})
        current_rollout().add_call(LLMCall([{"role": "user", "content": "judge"}], None, bad))
    (saved,) = store.query(group="g")
    assert RECORDING_GUARD.errors == errors + 1
    assert saved.messages() == [USER, {"role": "assistant", "content": "hi"}]
    assert saved.additional_histories == [] and saved.is_trainable()


def test_the_trajectory_is_what_the_rollout_held_when_it_exited():
    with rollout(group="g") as run:
        assert run.trajectory is None
        run.add_call(LLMCall([USER], None, turn("hi")))
        run.reward = 0.5
    run.reward = 1.0  # after exit: neither the trajectory nor a store sees it
    run.add_call(LLMCall([USER], None, turn("late")))
    assert run.trajectory.reward == 0.5 and len(run.trajectory.choices()) == 1
    assert run.trajectory is run.trajectory  # built once


async def test_concurrent_async_rollouts_do_not_share_the_context():
    async def one(i: int):
        async with rollout(group="g") as run:
            await asyncio.sleep(0.01 * (8 - i))
            current_rollout().add_call(
                LLMCall([{"role": "user", "content": str(i)}], None, turn(str(i)))
            )
        return run.trajectory

    trajectories = await asyncio.gather(*(one(i) for i in range(8)))
    assert [t.messages()[0]["content"] for t in trajectories] == [str(i) for i in range(8)]


async def test_decorator_form_gives_each_call_its_own_rollout(tmp_path):
    store = RolloutStore(tmp_path / "r.db")

    @rollout(group="dec", store=store)
    async def agent(x: int, rollout) -> int:
        rollout.reward = float(x)
        return x * 2

    assert await asyncio.gather(agent(1), agent(2)) == [2, 4]
    assert sorted(t.reward for t in store.query(group="dec")) == [1.0, 2.0]


def test_store_queries_and_exports(tmp_path):
    store = RolloutStore(tmp_path / "r.db")
    for group, reward in (("a", 1.0), ("a", 0.0), ("b", 0.3)):
        with rollout(group=group, metadata={"split": "train"}, store=store) as run:
            run.add_call(LLMCall([USER], None, turn(f"{group}{reward}")))
            run.reward = reward
    assert (
        len(store.query(min_reward=0.3)) == 2 and len(store.query(metadata={"split": "train"})) == 3
    )
    groups = store.export_rl_groups()
    assert [len(g["trajectories"]) for g in groups] == [2, 1]
    TrajectoryGroup.model_validate(groups[0])
    rows = store.export_sft_rows(top_k_per_group=1)
    assert [r["messages"][-1]["content"] for r in rows] == ["a1.0", "b0.3"]
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)


def test_groups_by_name_are_read_through_the_group_index(tmp_path):
    """What keeps a step's read as fast in a million rollouts as in ten thousand
    (bench/bench_soak.py measures it): the lookup never scans the table."""
    store = RolloutStore(tmp_path / "r.db")
    for group in ("a", "b", "c"):
        with rollout(group=group, store=store) as run:
            run.add_call(LLMCall([USER], None, turn(group)))
            run.reward = 1.0
        failed = rollout(group=group, store=store)
        with pytest.raises(RuntimeError), failed:
            raise RuntimeError("broken")
    groups = store.groups(names=["a", "c"])
    assert [g.metadata["group"] for g in groups] == ["a", "c"]
    assert [len(g.trajectories) for g in groups] == [1, 1] and len(groups[0].exceptions) == 1
    assert len(store.rollout_ids(["a"])) == 2  # the failed one too: it finished
    sql = "EXPLAIN QUERY PLAN SELECT grp, data, exception FROM trajectories WHERE grp IN (?, ?)"
    plan = " ".join(str(row) for row in sqlite3.connect(store.path).execute(sql, ["a", "c"]))
    assert "USING INDEX trajectories_by_group" in plan and "SCAN trajectories" not in plan


def test_a_stored_trajectory_can_be_rewritten_once_scored(tmp_path):
    store = RolloutStore(tmp_path / "r.db")
    with rollout(group="g", store=store) as run:
        run.add_call(LLMCall([USER], None, turn("x")))
    (trajectory,) = store.groups()[0].trajectories
    trajectory.reward, trajectory.metrics["judge"] = 0.7, 1.0
    store.update(trajectory)
    (again,) = store.groups()[0].trajectories
    assert again.reward == 0.7 and again.metrics["judge"] == 1.0
    with pytest.raises(KeyError, match="no trajectory"):
        store.update(Trajectory(metadata={"rollout_id": "missing"}))


def test_finished_rollouts_survive_sigkill(tmp_path):
    path = tmp_path / "r.db"
    script = textwrap.dedent(f"""
        import time
        from wandb_serverless.rollouts import LLMCall, RolloutStore, rollout
        store = RolloutStore({str(path)!r})
        i = 0
        while True:
            with rollout(group="g", store=store) as run:
                run.add_call(LLMCall([{{"role": "user", "content": str(i)}}], None, {{"role": "assistant", "content": "x"}}))
            print(i, flush=True)
            i += 1
            time.sleep(0.01)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    finished = -1
    deadline = time.monotonic() + 60
    while finished < 20 and time.monotonic() < deadline:
        finished = int(process.stdout.readline())
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    stored = RolloutStore(path).query(group="g")
    contents = {t.messages()[0]["content"] for t in stored}
    assert {str(i) for i in range(finished + 1)} <= contents  # every rollout it reported finished
    assert json.loads(stored[0].model_dump_json())["messages_and_choices"]


SYNCHRONOUS = pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])


def test_the_store_applies_its_synchronous_setting_and_rejects_others(tmp_path):
    for name, level in (("NORMAL", 1), ("FULL", 2)):
        store = RolloutStore(tmp_path / f"{name}.db", synchronous=name)
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == level
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError, match="synchronous must be 'NORMAL' or 'FULL', not 'OFF'"):
        RolloutStore(tmp_path / "off.db", synchronous="OFF")


@SYNCHRONOUS
def test_concurrent_saves_are_each_committed_when_save_returns(tmp_path, synchronous):
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "r.db"
    store = RolloutStore(path, synchronous=synchronous)

    def save(i: int) -> bool:
        trajectory = Trajectory(messages_and_choices=[USER], metadata={"rollout_id": f"t{i}"})
        saved = store.save(trajectory, group="g")
        reader = sqlite3.connect(path)  # another connection sees it: it was committed
        try:
            return reader.execute("SELECT 1 FROM trajectories WHERE id=?", (saved,)).fetchone()
        finally:
            reader.close()

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(save, range(200)))
    assert store.count() == 200


@SYNCHRONOUS
async def test_concurrent_async_rollouts_share_commits(tmp_path, synchronous):
    store = RolloutStore(tmp_path / "r.db", synchronous=synchronous)
    commits = 0
    db = store._db

    class Counting:  # sqlite3.Connection can't be patched; count writes through a proxy
        def __getattr__(self, name):
            return getattr(db, name)

        def execute(self, sql, *args):
            nonlocal commits
            commits += sql.startswith("INSERT")  # autocommit: one statement, one transaction
            return db.execute(sql, *args)

    store._db = Counting()

    async def one(i: int) -> None:
        async with rollout(group="g", store=store) as run:
            run.add_call(LLMCall([{"role": "user", "content": str(i)}], None, turn("x")))

    await asyncio.gather(*(one(i) for i in range(100)))
    assert store.count() == 100
    assert 1 <= commits <= 10  # group commit: not one fsync per rollout


@SYNCHRONOUS
async def test_each_async_save_is_committed_when_it_returns(tmp_path, synchronous):
    path = tmp_path / "r.db"
    store = RolloutStore(path, synchronous=synchronous)
    reader = sqlite3.connect(path)  # another connection sees it: it was committed

    async def one(i: int) -> bool:
        await asyncio.sleep(0.001 * (i % 7))
        trajectory = Trajectory(messages_and_choices=[USER], metadata={"rollout_id": f"a{i}"})
        saved = await store.asave(trajectory, group="g")
        return reader.execute("SELECT 1 FROM trajectories WHERE id=?", (saved,)).fetchone()

    assert all(await asyncio.gather(*(one(i) for i in range(200))))
    reader.close()


@SYNCHRONOUS
async def test_a_failed_commit_reaches_every_waiter_and_the_next_save_works(
    tmp_path, monkeypatch, synchronous
):
    store = RolloutStore(tmp_path / "r.db", synchronous=synchronous)
    commit = store._commit

    def disk_full(rows):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "_commit", disk_full)

    def save(i: int):
        return store.asave(Trajectory(metadata={"rollout_id": f"f{i}"}), group="g")

    results = await asyncio.gather(*(save(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    monkeypatch.setattr(store, "_commit", commit)
    assert await save(9) == "f9" and store.count() == 1


def test_a_rollout_with_no_model_turn_is_said_once_and_groups_leaves_it_out(
    tmp_path, caplog, monkeypatch
):
    """Calls through a client nothing records (raw HTTP, the Responses API) leave a rollout with no
    model turn: the user hears it when it finishes, not from a failed training job."""
    from wandb_serverless.rollouts import recorder

    monkeypatch.setattr(recorder, "_warned_no_turns", False)
    store = RolloutStore(tmp_path / "r.db")
    for _ in range(2):
        with caplog.at_level("WARNING"), rollout(group="g", store=store) as run:
            run.reward = 1.0  # the agent called the model through an unrecorded client
    said = [r.getMessage() for r in caplog.records if "no model turn" in r.getMessage()]
    assert len(said) == 1 and "Responses API calls and raw HTTP" in said[0]  # once a process
    with rollout(group="g", store=store) as run:
        run.add_call(LLMCall([USER], None, turn("sunny")))
        run.reward = 0.5
    caplog.clear()
    (group,) = store.groups()
    assert group.rewards == [0.5] and store.left_out == 2
    assert "2 rollout(s) left out" in caplog.text
    assert len(store.query(group="g")) == 3  # kept in the store: only left out of training
