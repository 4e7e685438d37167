"""``wandb-serverless models | checkpoints | jobs``: the training API's resources."""

from __future__ import annotations

import argparse
from typing import Any

from wandb_serverless.cli.common import (
    EXIT_OK,
    api_command,
    client,
    print_json,
)


def _models_create(args: argparse.Namespace) -> int:
    model = client(args).models.create(
        project=args.project,
        name=args.name,
        base_model=args.base_model,
        entity=args.entity,
        return_existing=args.return_existing,
    )
    print_json(model)
    return EXIT_OK


def _models_list(args: argparse.Namespace) -> int:
    from wandb_serverless.api.errors import APIStatusError
    from wandb_serverless.models import CheckpointRef

    try:
        models = client(args).models.list()
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
        print_json({**model.model_dump(mode="json"), "ref": str(ref)})
    return EXIT_OK


def _models_served(args: argparse.Namespace) -> int:
    for model in client(args).list_models():
        print_json(model)
    return EXIT_OK


def _models_delete(args: argparse.Namespace) -> int:
    print_json(client(args).models.delete(args.model_id))
    return EXIT_OK


def _checkpoints_list(args: argparse.Namespace) -> int:
    for checkpoint in client(args).checkpoints.iter(args.model_id, order=args.order):
        print_json(checkpoint)
    return EXIT_OK


def _checkpoints_delete(args: argparse.Namespace) -> int:
    print_json(client(args).checkpoints.delete(args.model_id, args.steps))
    return EXIT_OK


def _jobs_events(args: argparse.Namespace) -> int:
    events = client(args).training_jobs.events
    stream = (
        events.follow(args.job_id, poll_interval=1.0) if args.follow else events.iter(args.job_id)
    )
    for event in stream:
        print_json(event)
    return EXIT_OK


def _model_commands(commands: Any) -> None:
    """wandb-serverless models create|list|served|delete"""
    models = commands.add_parser("models", help="trainable models").add_subparsers(
        dest="action", required=True
    )
    create = api_command(models, "create", "register a trainable model (prints it as JSON)")
    create.add_argument("name")
    create.add_argument("--project", required=True)
    create.add_argument("--base-model", required=True)
    create.add_argument("--entity")
    create.add_argument("--return-existing", action="store_true", help="no error if it exists")
    create.set_defaults(handler=_models_create)
    api_command(
        models, "list", "list registered models with their IDs (local backend; W&B has no list)"
    ).set_defaults(handler=_models_list)
    api_command(
        models, "served", "list the models chat can use here (base models and checkpoints)"
    ).set_defaults(handler=_models_served)
    delete = api_command(models, "delete", "delete a model, its checkpoints and its run")
    delete.add_argument("model_id")
    delete.set_defaults(handler=_models_delete)


def _checkpoint_commands(commands: Any) -> None:
    """wandb-serverless checkpoints list|delete"""
    checkpoints = commands.add_parser("checkpoints", help="a model's checkpoints").add_subparsers(
        dest="action", required=True
    )
    listing = api_command(
        checkpoints, "list", "list a model's checkpoints (one JSON object per line)"
    )
    listing.add_argument("model_id")
    listing.add_argument("--order", choices=["asc", "desc"], default="asc")
    listing.set_defaults(handler=_checkpoints_list)
    drop = api_command(checkpoints, "delete", "delete checkpoints by step")
    drop.add_argument("model_id")
    drop.add_argument("--steps", type=int, nargs="+", required=True)
    drop.set_defaults(handler=_checkpoints_delete)


def _job_commands(commands: Any) -> None:
    """wandb-serverless jobs events"""
    jobs = commands.add_parser("jobs", help="training jobs").add_subparsers(
        dest="action", required=True
    )
    events = api_command(jobs, "events", "print a job's events (one JSON object per line)")
    events.add_argument("job_id")
    events.add_argument(
        "--follow", action="store_true", help="wait for new events until the job ends"
    )
    events.set_defaults(handler=_jobs_events)


def add_commands(commands: Any) -> None:
    _model_commands(commands)
    _checkpoint_commands(commands)
    _job_commands(commands)
