"""Durability: kill the server mid-job, start it again: the job is failed, earlier checkpoints live."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from support.fixtures import MODEL_CACHE

from wandb_serverless.api import Client, TrainingJobFailedError

KEY = "restart-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir, port: int) -> subprocess.Popen:
    env = {**os.environ, "WANDB_SERVERLESS_MODEL_CACHE": str(MODEL_CACHE)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wandb_serverless.cli",
            "serve",
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health").status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not start")


@pytest.mark.slow
def test_killed_mid_job_the_job_fails_and_earlier_checkpoints_are_intact(tmp_path):
    port = free_port()
    server = start_server(tmp_path, port)
    try:
        client = Client(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1")
        model = client.models.create(project="agents", name="durable", base_model="default")
        rows = [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            }
        ]
        url = client.local_artifacts.publish(rows, entity="local", project="agents", name="data")[
            "url"
        ]
        list(
            client.training_jobs.events.follow(
                client.training_jobs.create_sft(model_id=model.id, training_data_url=url).id,
                poll_interval=0.1,
            )
        )
        long_job = client.training_jobs.create_sft(
            model_id=model.id,
            training_data_url=url,
            config={"batch_size": 1},
            experimental_config={"num_epochs": 500},
        )
        for event in client.training_jobs.events.follow(long_job.id, poll_interval=0.1):
            if event.type == "gradient_step":
                break
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        server = start_server(tmp_path, port)
        with pytest.raises(TrainingJobFailedError, match="restarted while this job was running"):
            list(client.training_jobs.events.follow(long_job.id, poll_interval=0.1))
        assert [c.step for c in client.checkpoints.iter(model.id)] == [1]
        chat = client.openai().chat.completions.create(
            model="wandb-artifact:///local/agents/durable:latest",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
        )
        assert chat.choices[0].message.content is not None
    finally:
        server.kill()
        server.wait(10)
