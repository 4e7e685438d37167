"""Continuous training from Weave: many writer processes export rollouts over HTTP (the real
weave client against a loopback trace server), trainers poll, and every rollout trains
exactly once: beside another trainer, and across restarts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from support.fixtures import sampled_rollouts
from support.weave_fake import HTTPTraceServer, http_weave_client

from wandb_serverless.rollouts import LLMCall, rollout
from wandb_serverless.rollouts.recorder import make_choice
from wandb_serverless.rollouts.weave_source import WeaveRollouts
from wandb_serverless.training import TrainResult
from wandb_serverless.weave_training import CLAIM, TRAINED, WeaveTrainer

TESTS = Path(__file__).resolve().parents[1]
WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from support.weave_fake import http_weave_client
    from wandb_serverless.rollouts import LLMCall, rollout
    from wandb_serverless.rollouts.recorder import make_choice

    url, writer, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    client = http_weave_client(url)
    logprobs = {{"content": [{{"token": "token_id:5", "logprob": -0.5, "bytes": [1], "top_logprobs": []}}]}}
    for i in range(count):
        with rollout(group=f"{{writer}}-g{{i // size}}", metadata={{"writer": writer}}, weave=client) as run:
            choice = make_choice({{"content": f"answer {{i}}"}}, finish_reason="stop",
                                 logprobs=logprobs, token_ids=[5], prompt_token_ids=[1, 2])
            run.add_call(LLMCall([{{"role": "user", "content": f"q{{i // size}}"}}], None, choice))
            run.reward = float(i % 2)
    client.flush()
    """
).format(tests=str(TESTS))


class Recorder:
    """A training step that records what it was given (the transport, claims and marks are
    under test here; real RL steps from Weave are in tests/e2e/test_weave_loop.py)."""

    def __init__(self) -> None:
        self.step = 0
        self.trained: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, groups) -> TrainResult:
        with self.lock:
            self.step += 1
            self.trained += [t.metadata["weave_call_id"] for g in groups for t in g.trajectories]
            return TrainResult(self.step)

    def latest_step(self) -> int:
        return self.step


@pytest.fixture
def trace():
    """A loopback trace server; the clients made with ``connect`` are flushed before it stops
    (a client's background sender would retry a stopped server at exit)."""
    clients = []
    with HTTPTraceServer() as server:

        def connect(**kwargs):
            clients.append(http_weave_client(server.url, **kwargs))
            return clients[-1]

        server.connect = connect
        yield server
        for client in clients:
            client.flush()
    from weave.trace.context import weave_client_context

    weave_client_context.set_weave_client_global(None)


def write(client, group: str, reward: float, n: int = 1) -> None:
    for _ in range(n):
        with rollout(group=group, weave=client) as run:
            logprobs = {"content": [{"token": "token_id:5", "logprob": -0.5, "top_logprobs": []}]}
            run.add_call(
                LLMCall(
                    [{"role": "user", "content": group}],
                    None,
                    make_choice(
                        {"content": "a"}, finish_reason="stop", logprobs=logprobs, token_ids=[5]
                    ),
                )
            )
            run.reward = reward
    client.flush()


@pytest.mark.slow
def test_four_writer_processes_1000_rollouts_two_trainers_each_rollout_trains_once(tmp_path, trace):
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, trace.url, f"w{i}", "250", "5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    recorders = [Recorder(), Recorder()]
    together = threading.Barrier(2)

    class Racing(WeaveTrainer):
        """Both trainers read before either claims, several times: they race on one set."""

        races = 3

        def available(self):
            found = super().available()
            if self.races:
                self.races -= 1
                try:
                    together.wait(timeout=60)
                except threading.BrokenBarrierError:  # the other one has stopped polling
                    self.races = 0
            return found

    trainers = [
        Racing(
            None,
            WeaveRollouts(client=trace.connect(set_global=False)),
            state_file=tmp_path / f"trainer{i}.json",
            min_group_size=1,
            train=recorder,
            latest_step=recorder.latest_step,
        )
        for i, recorder in enumerate(recorders)
    ]
    stop = threading.Event()

    def poll(trainer: WeaveTrainer) -> None:
        while not stop.is_set():
            trainer.step()

    threads = [threading.Thread(target=poll, args=(t,)) for t in trainers]
    for thread in threads:
        thread.start()
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err[-2000:]
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    for trainer in trainers:  # whatever arrived after the last poll
        while trainer.step() is not None:
            pass

    roots = {
        c["id"]
        for c in trace.server.query_calls(
            {"project_id": "team/agents", "filter": {"trace_roots_only": True}}
        )
    }
    trained = recorders[0].trained + recorders[1].trained
    assert len(roots) == 1000
    assert len(trained) == len(set(trained)), "a rollout trained twice"
    assert set(trained) == roots
    marks = [f for f in trace.server.feedback if f["feedback_type"] == TRAINED]
    assert len(marks) == 1000
    claimed_by: dict[str, set] = {}
    for f in trace.server.feedback:
        if f["feedback_type"] == CLAIM:
            claimed_by.setdefault(f["weave_ref"], set()).add(f["payload"]["trainer"])
    assert any(len(names) == 2 for names in claimed_by.values()), "the trainers never raced"


@pytest.mark.slow
def test_a_restart_after_a_crash_mid_step_trains_what_did_not_train(tmp_path, trace):
    client = trace.connect()
    write(client, "a", 0.0, 2)
    write(client, "a", 1.0, 2)
    recorder = Recorder()

    def crash(groups):
        raise KeyboardInterrupt  # the process dies during the job, before any checkpoint

    state = tmp_path / "trainer.json"
    source = WeaveRollouts(client=client)
    first = WeaveTrainer(None, source, state_file=state, train=crash, latest_step=lambda: 0)
    with pytest.raises(KeyboardInterrupt):
        first.step()
    again = WeaveTrainer(
        None, source, state_file=state, train=recorder, latest_step=recorder.latest_step
    )
    assert again.name == first.name  # its claims are still its own
    assert again.step() is not None and len(recorder.trained) == 4
    assert again.step() is None and len(recorder.trained) == 4


@pytest.mark.slow
def test_a_restart_after_the_step_trained_marks_and_never_retrains(tmp_path, trace):
    client = trace.connect()
    write(client, "a", 0.0, 2)
    write(client, "a", 1.0, 1)
    recorder = Recorder()

    def trains_then_dies(groups):
        recorder(groups)  # the checkpoint exists...
        raise KeyboardInterrupt  # ...but the trainer dies before it marks the rollouts

    state = tmp_path / "trainer.json"
    source = WeaveRollouts(client=client)
    first = WeaveTrainer(
        None, source, state_file=state, train=trains_then_dies, latest_step=recorder.latest_step
    )
    with pytest.raises(KeyboardInterrupt):
        first.step()
    assert len(recorder.trained) == 3
    again = WeaveTrainer(
        None, source, state_file=state, train=recorder, latest_step=recorder.latest_step
    )
    assert again.step() is None
    assert len(recorder.trained) == 3
    assert sum(f["feedback_type"] == TRAINED for f in trace.server.feedback) == 3


@pytest.mark.slow
def test_a_live_claim_of_another_trainer_is_respected_until_its_lease_ends(tmp_path, trace):
    client = trace.connect()
    write(client, "a", 0.0, 1)
    write(client, "a", 1.0, 1)
    source = WeaveRollouts(client=client)
    dead = Recorder()

    def dies(groups):
        raise KeyboardInterrupt

    crashed = WeaveTrainer(
        None, source, state_file=tmp_path / "a.json", train=dies, latest_step=lambda: 0
    )
    with pytest.raises(KeyboardInterrupt):
        crashed.step()
    other = Recorder()
    waiting = WeaveTrainer(
        None, source, state_file=tmp_path / "b.json", train=other, latest_step=other.latest_step
    )
    assert waiting.step() is None  # the crashed trainer's claim is live
    time.sleep(1.0)
    expired = WeaveTrainer(
        None,
        source,
        state_file=tmp_path / "b.json",
        train=other,
        latest_step=other.latest_step,
        lease_s=0.8,
    )
    assert expired.step() is not None and len(other.trained) == 2
    assert dead.trained == []


@pytest.mark.slow
def test_small_groups_wait_for_more_rollouts(tmp_path, trace):
    client = trace.connect()
    write(client, "a", 0.0, 1)
    recorder = Recorder()
    trainer = WeaveTrainer(
        None,
        WeaveRollouts(client=client),
        state_file=tmp_path / "t.json",
        train=recorder,
        latest_step=recorder.latest_step,
        min_group_size=2,
    )
    assert trainer.step() is None
    write(client, "a", 1.0, 1)
    assert trainer.step() is not None and len(recorder.trained) == 2


def test_bad_arguments_and_state_are_clear_errors(tmp_path):
    source = WeaveRollouts(client=object())
    with pytest.raises(ValueError, match="model"):
        WeaveTrainer(None, source, state_file=tmp_path / "s.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable trainer state"):
        WeaveTrainer(None, source, state_file=bad, train=Recorder(), latest_step=lambda: 0)


@pytest.mark.slow
def test_a_weave_trainer_runs_real_rl_steps_on_the_local_backend(backend, oai, tmp_path, trace):
    """Rollouts the local model sampled (exact tokens), exported to Weave, trained by a
    TrainableModel's RL job; the new checkpoint serves."""
    from wandb_serverless import TrainableModel

    client = trace.connect()
    sampled_rollouts(oai, 4, weave=client)
    client.flush()
    tm = TrainableModel(
        "weave-trained", "weave", "default", client=backend.client(), history_dir=tmp_path,
        progress=False,
    )  # fmt: skip
    trainer = WeaveTrainer(tm, WeaveRollouts(client=client), state_file=tmp_path / "t.json")
    result = trainer.step()
    assert result is not None and result.step == 1 and result.metrics["num_trainable_tokens"] > 0
    assert trainer.step() is None  # nothing new: nothing trains twice
    served = oai.chat.completions.create(
        model=tm.ref, messages=[{"role": "user", "content": "Name a color."}], max_tokens=4
    )
    assert served.choices[0].message.content
