"""The `wandb-serverless` CLI: each command's success and its one-line bad-input error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.fixtures import sampled_rollouts
from support.weave_fake import HTTPTraceServer, http_weave_client

from wandb_serverless.rollouts import RolloutStore, Trajectory

TESTS = Path(__file__).resolve().parents[1]
# `--from-weave` logs in with weave.init(project); offline, the process gets the client
# weave.init would make (the real one, over HTTP to a loopback trace server) ready instead
WEAVE_LOGGED_IN = (
    "import sys; sys.path.insert(0, {tests!r}); from support.weave_fake import http_weave_client;"
    " http_weave_client({url!r}); from wandb_serverless.cli import main; sys.exit(main())"
)


def cli(
    *args: str, backend=None, check: bool = True, weave_url: str | None = None
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "wandb_serverless.cli", *args]
    if weave_url is not None:
        login = WEAVE_LOGGED_IN.format(tests=str(TESTS), url=weave_url)
        command = [sys.executable, "-c", login, *args]
    if backend is not None:
        command += ["--base-url", backend.base_url, "--api-key", backend.api_key]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_models_checkpoints_train_and_jobs_commands(backend, tmp_path):
    model = json.loads(
        cli(
            "models",
            "create",
            "cli-agent",
            "--project",
            "cli",
            "--base-model",
            "default",
            "--return-existing",
            backend=backend,
        ).stdout
    )
    assert model["name"] == "cli-agent" and model["entity"] == "local"
    data = tmp_path / "train.jsonl"
    data.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            }
        )
        + "\n"
    )
    trained = json.loads(
        cli(
            "train",
            "sft",
            "--model-id",
            model["id"],
            "--data",
            str(data),
            "--batch-size",
            "1",
            backend=backend,
        ).stdout.splitlines()[-1]
    )
    assert trained["step"] == 1 and trained["metrics"]["loss"] > 0
    events = [
        json.loads(line)
        for line in cli(
            "jobs", "events", trained["job_id"], "--follow", backend=backend
        ).stdout.splitlines()
    ]
    assert events[0]["type"] == "training_started" and events[-1]["type"] == "training_ended"
    checkpoints = [
        json.loads(line)
        for line in cli("checkpoints", "list", model["id"], backend=backend).stdout.splitlines()
    ]
    assert [c["step"] for c in checkpoints] == [1]
    # a trained step lists the metrics it was trained with, not {}
    assert checkpoints[0]["metrics"]["loss"] == pytest.approx(trained["metrics"]["loss"])
    registered = [
        json.loads(line) for line in cli("models", "list", backend=backend).stdout.splitlines()
    ]
    mine = [m for m in registered if m["name"] == "cli-agent"]
    assert len(mine) == 1 and mine[0]["id"] == model["id"] and mine[0]["latest_step"] == 1
    assert mine[0]["ref"] == "wandb-artifact:///local/cli/cli-agent:latest"
    served = [
        json.loads(line)["id"]
        for line in cli("models", "served", backend=backend).stdout.splitlines()
    ]
    assert "wandb-artifact:///local/cli/cli-agent:step1" in served
    deleted = json.loads(
        cli("checkpoints", "delete", model["id"], "--steps", "1", "5", backend=backend).stdout
    )
    assert deleted == {"deleted_count": 1, "not_found_steps": [5]}
    assert (
        json.loads(cli("models", "delete", model["id"], backend=backend).stdout)["deleted_run"]
        is True
    )


def test_rollouts_list_and_export_and_train_rl(backend, oai, tmp_path):
    store = RolloutStore(tmp_path / "rollouts.db")
    sampled_rollouts(oai, 2, store=store)
    listing = [
        json.loads(line)
        for line in cli("rollouts", "list", "--store", str(store.path)).stdout.splitlines()
    ]
    assert sorted(r["reward"] for r in listing) == [0.0, 1.0]
    assert all(r["group"] == "colors" and r["model_turns"] == 1 for r in listing)
    groups = tmp_path / "groups.jsonl"
    cli("rollouts", "export", "--store", str(store.path), "--format", "rl", "--out", str(groups))
    (line,) = groups.read_text().splitlines()  # one group a line, as every command prints
    assert sorted(t["reward"] for t in json.loads(line)["trajectories"]) == [0.0, 1.0]
    rows = cli(
        "rollouts", "export", "--store", str(store.path), "--format", "sft", "--top-k", "1"
    ).stdout.splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["messages"][-1]["role"] == "assistant"
    model = json.loads(
        cli(
            "models",
            "create",
            "cli-rl",
            "--project",
            "cli",
            "--base-model",
            "default",
            "--return-existing",
            backend=backend,
        ).stdout
    )
    result = json.loads(
        cli(
            "train", "rl", "--model-id", model["id"], "--groups", str(groups), backend=backend
        ).stdout.splitlines()[-1]
    )
    assert result["step"] >= 1 and result["metrics"]["num_trainable_tokens"] > 0


def test_import_and_train_from_weave_each_rollout_once(backend, oai, tmp_path):
    from weave.trace.context import weave_client_context

    with HTTPTraceServer() as trace:
        client = http_weave_client(trace.url)
        try:
            sampled_rollouts(oai, 2, weave=client)
            client.flush()
        finally:
            weave_client_context.set_weave_client_global(None)
        store = tmp_path / "imported.db"
        for _ in range(2):  # twice: the same rows, no copies
            imported = json.loads(
                cli("rollouts", "import", "--from-weave", "team/agents", "--store", str(store),
                    weave_url=trace.url).stdout
            )  # fmt: skip
        assert imported["imported"] == 2
        assert sorted(t.reward for t in RolloutStore(store).query()) == [0.0, 1.0]
        model = json.loads(
            cli("models", "create", "weave-rl", "--project", "cli", "--base-model", "default",
                "--return-existing", backend=backend).stdout
        )  # fmt: skip
        train = ["train", "rl", "--model-id", model["id"], "--from-weave", "team/agents"]
        train += ["--state-file", str(tmp_path / "trainer.json")]
        first = json.loads(cli(*train, backend=backend, weave_url=trace.url).stdout)
        assert first["step"] == 1 and first["metrics"]["num_trainable_tokens"] > 0
        again = json.loads(cli(*train, backend=backend, weave_url=trace.url).stdout)
        assert again == {"trained": 0, "from": "team/agents"}
        sft = ["train", "sft", "--model-id", model["id"], "--from-weave", "team/agents"]
        tuned = json.loads(cli(*sft, backend=backend, weave_url=trace.url).stdout.splitlines()[-1])
        assert tuned["step"] == 2


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["models", "create", "x"], 2, "required: --project, --base-model"),
        (
            ["checkpoints", "list", "no-such-model"],
            1,
            "error: GET /v1/preview/models/no-such-model/checkpoints -> 404",
        ),
        (["jobs", "events", "no-such-job"], 1, "-> 404"),
        (
            ["rollouts", "list", "--store", "/nonexistent/r.db"],
            1,
            "error: no rollout store at /nonexistent/r.db",
        ),
        (
            ["models", "create", "x", "--project", "p", "--base-model", "other/model"],
            1,
            "is not served here",
        ),
        (["train", "rl", "--groups", "g.json"], 1, "pass --model-id ID, or --name NAME"),
        (["train", "sft", "--model-id", "no-such-model", "--data", "x"], 1, "no model with ID"),
        (["train", "sft", "--name", "n", "--data", "x"], 1, "--name needs --project"),
    ],
)
def test_bad_input_is_one_clear_line_and_an_exit_code(backend, args, code, message):
    needs_api = args[0] != "rollouts"
    result = cli(*args, backend=backend if needs_api and code != 2 else None, check=False)
    assert result.returncode == code
    assert message in result.stderr and "Traceback" not in result.stderr
    if code == 1:
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_listing_cut_short_by_head_is_not_an_error(tmp_path):
    """`rollouts list | head -1` under `set -o pipefail`: the reader closing the pipe early
    is the normal end of a pipeline, not a failure (three times: it used to fail 2 in 3)."""
    store = RolloutStore(tmp_path / "r.db")
    for i in range(3000):  # more than a pipe holds
        store.save(Trajectory(reward=i / 3000, metadata={"group": "g", "n": "x" * 40}), group="g")
    listing = f"{sys.executable} -m wandb_serverless.cli rollouts list --store {store.path}"
    for _ in range(3):
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", f"{listing} | head -1"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert (result.returncode, result.stderr) == (0, "")
        assert json.loads(result.stdout)["group"] == "g"


def test_bad_files_and_unreachable_servers_are_named_in_the_error(backend, tmp_path):
    model = json.loads(
        cli("models", "create", "cli-files", "--project", "cli", "--base-model", "default",
            "--return-existing", backend=backend).stdout
    )  # fmt: skip
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"messages": []}\nnot json\n')
    for command in (["train", "sft", "--data"], ["train", "rl", "--groups"]):
        result = cli(*command, str(bad), "--model-id", model["id"], backend=backend, check=False)
        assert result.returncode == 1
        assert f"{bad}, line 2: not JSON" in result.stderr, result.stderr
    result = cli("models", "list", "--base-url", "http://127.0.0.1:9/v1", "--api-key", "k",
                 check=False)  # fmt: skip
    assert result.returncode == 1
    assert "could not connect to http://127.0.0.1:9/v1/preview/models" in result.stderr, (
        result.stderr
    )


def test_missing_api_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    result = subprocess.run(
        [sys.executable, "-m", "wandb_serverless.cli", "models", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in __import__("os").environ.items() if k != "WANDB_API_KEY"},
    )
    assert result.returncode == 1
    assert "--api-key" in result.stderr and "WANDB_API_KEY" in result.stderr


def test_models_list_on_a_server_without_a_list_says_how_to_get_an_id(fault_server):
    """W&B's training API has no model list: the CLI says how to get an ID instead."""
    result = cli("models", "list", "--base-url", fault_server.url, "--api-key", "k", check=False)
    assert result.returncode == 1 and "--return-existing" in result.stderr


def test_train_by_id_on_a_server_that_cannot_look_it_up_asks_for_the_name(fault_server):
    """W&B's training API has no lookup by ID: the CLI says what to give instead, before
    anything is published or posted."""
    result = cli(
        *("train", "sft", "--model-id", "m1", "--data", "wandb-artifact:///e/p/d:v0"),
        *("--base-url", fault_server.url, "--api-key", "k"),
        check=False,
    )
    assert result.returncode == 1 and "--name N --project P --base-model B" in result.stderr
    assert [r.method for r in fault_server.requests] == ["GET"]


def test_serve_fails_at_once_when_the_port_is_taken():
    import socket
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = cli("serve", "--port", str(port), check=False)
    assert result.returncode == 1 and f"127.0.0.1:{port}" in result.stderr
    assert time.monotonic() - started < 10  # before loading the model
