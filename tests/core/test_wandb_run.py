"""Local training logs to a real W&B run (the wandb SDK, offline without a W&B key), read
back from the run's own files; the mode rules of ``wandb_serverless.wandb_run``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.fault_server import Reply
from support.wandb_offline import finished, history, run_info

from wandb_serverless.api import Client
from wandb_serverless.training import TrainableModel
from wandb_serverless.trajectory import Trajectory, TrajectoryGroup
from wandb_serverless.wandb_run import run_mode

KEY = "local-backend-key"
MODEL = {"id": "m-1", "entity": "me", "project": "p", "name": "agent", "base_model": "b"}


def _job(fault_server, job: str, step: int, loss: float) -> None:
    fault_server.on("POST", "/preview/training-jobs", Reply(200, {"id": job}))
    events = [
        {"id": "e1", "type": "training_started", "data": {"num_sequences": 1}},
        {"id": "e2", "type": "gradient_step", "data": {"loss": loss}},
        {"id": "e3", "type": "training_ended", "data": {"step": step}},
    ]
    fault_server.on(
        "GET",
        f"/preview/training-jobs/{job}/events",
        Reply(200, {"data": events, "has_more": False}),
    )
    page = {"data": [{"id": f"c{step}", "step": step, "metrics": {}}], "has_more": False}
    fault_server.on("GET", "/preview/models/m-1/checkpoints", Reply(200, page))


def test_local_training_logs_metrics_and_rewards_to_an_offline_wandb_run(
    fault_server, monkeypatch, tmp_path
):
    monkeypatch.setenv("WANDB_SERVERLESS_LOCAL", "1")  # the fault server plays a local backend
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    fault_server.on("POST", "/preview/models", Reply(200, MODEL))
    tm = TrainableModel(
        "agent",
        "p",
        "b",
        client=Client(api_key=KEY, base_url=fault_server.url),
        progress=False,
        history_dir=tmp_path,
    )
    group = TrajectoryGroup(trajectories=[Trajectory(reward=1.0), Trajectory(reward=0.0)])
    better = TrajectoryGroup(trajectories=[Trajectory(reward=1.0), Trajectory(reward=0.5)])
    _job(fault_server, "job-1", 1, 0.5)
    tm.train_rl([group])
    fault_server.routes.clear()
    _job(fault_server, "job-2", 2, 0.25)
    tm.train_rl([better])
    tm.finish_run()

    (log_file,) = (finished(p) for p in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    info = run_info(log_file)  # one run per TrainableModel, grouped under the model's name
    assert (info["entity"], info["project"], info["group"]) == ("me", "p", "agent")
    assert info["id"].startswith("agent-")
    rows = [r for r in history(log_file) if "train/loss" in r]
    assert [(r["_step"], r["train/loss"], r["train/reward"]) for r in rows] == [
        (1, 0.5, 0.5),
        (2, 0.25, 0.75),
    ]
    # the JSONL history says the same
    assert [h["train/reward"] for h in tm.history()] == [0.5, 0.75]
    # and the SDK's own CLI sees a run to upload
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("wandb")), "sync", "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Would sync 1 run" in listed.stdout + listed.stderr


@pytest.mark.parametrize(
    ("hosted", "env", "expected"),
    [
        (True, {}, ("online", KEY)),
        (False, {}, ("offline", None)),
        (False, {"WANDB_API_KEY": KEY}, ("offline", None)),  # the backend's key is not W&B's
        (False, {"WANDB_API_KEY": "wandb-key"}, ("online", "wandb-key")),
        (False, {"WANDB_MODE": "disabled"}, (None, None)),  # W&B's own switch wins
        (True, {"WANDB_MODE": "offline"}, (None, KEY)),
    ],
)
def test_the_run_is_online_only_with_a_wandb_key(monkeypatch, hosted, env, expected):
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run_mode(hosted=hosted, service_key=KEY) == expected


def test_two_objects_for_one_model_in_one_process_each_log(fault_server, monkeypatch, tmp_path):
    """W&B refuses a run ID already in use: each TrainableModel logs to its own run, grouped."""
    monkeypatch.setenv("WANDB_SERVERLESS_LOCAL", "1")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    fault_server.on("POST", "/preview/models", Reply(200, MODEL))
    client = Client(api_key=KEY, base_url=fault_server.url)
    first, second = (
        TrainableModel("agent", "p", "b", client=client, progress=False, history_dir=tmp_path)
        for _ in range(2)
    )
    first.log_metrics(1, {"eval/score": 0.5})
    second.log_metrics(1, {"eval/score": 0.75})
    first.finish_run()
    second.finish_run()
    logs = sorted(finished(p) for p in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2
    assert {run_info(p)["group"] for p in logs} == {"agent"}
    scores = sorted(r["eval/score"] for p in logs for r in history(p) if "eval/score" in r)
    assert scores == [0.5, 0.75]
