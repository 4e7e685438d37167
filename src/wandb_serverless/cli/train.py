"""``wandb-serverless train rl | sft``: a training step through ``TrainableModel``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wandb_serverless.cli.common import (
    EXIT_OK,
    api_command,
    client,
    model_arguments,
    print_json,
)
from wandb_serverless.cli.rollouts import weave_rollouts

if TYPE_CHECKING:  # imported when used: the CLI starts without torch or the SDK clients
    from wandb_serverless.training import TrainableModel


def _model(args: argparse.Namespace) -> TrainableModel:
    """The TrainableModel the training commands work on: by ID (on a local backend, which
    lists its models) or by name, project and base model (anywhere: W&B has no lookup by ID)."""
    from wandb_serverless.training import TrainableModel

    api = client(args)
    if args.name:
        if not (args.project and args.base_model):
            raise ValueError("--name needs --project and --base-model")
        return TrainableModel(args.name, args.project, args.base_model, args.entity, client=api)
    if not args.model_id:
        raise ValueError("pass --model-id ID, or --name NAME --project P --base-model B")
    return TrainableModel.from_id(args.model_id, client=api)


def _print_result(result: Any) -> None:
    print_json({"job_id": result.job_id, "step": result.step, "metrics": result.metrics})


def _train_rl_from_weave(args: argparse.Namespace) -> int:
    """Steps on what Weave holds, each rollout once (claims and marks: weave_training)."""
    from wandb_serverless.weave_training import WeaveTrainer

    config = {"learning_rate": args.learning_rate} if args.learning_rate else None
    trainer = WeaveTrainer(
        _model(args),
        weave_rollouts(args),
        state_file=args.state_file,
        min_group_size=args.min_group_size,
        config=config,
    )
    steps = trainer.run(
        poll_s=args.poll, max_steps=None if args.watch else 1, idle_polls=None if args.watch else 1
    )
    for result in steps:
        _print_result(result)
    if not steps:
        print_json({"trained": 0, "from": args.from_weave})
    return EXIT_OK


def _train_rl(args: argparse.Namespace) -> int:
    from wandb_serverless.training import read_json_rows, trainable_groups

    if args.from_weave:
        return _train_rl_from_weave(args)
    if not args.groups:
        raise ValueError("pass --groups FILE or --from-weave ENTITY/PROJECT")
    model = _model(args)
    groups, dropped = trainable_groups(read_json_rows(args.groups))
    if dropped:
        print(f"dropped {dropped} group(s) with no reward variance", file=sys.stderr)
    if not groups:
        raise ValueError("no group has reward variance: nothing to train")
    config = {"learning_rate": args.learning_rate} if args.learning_rate else None
    _print_result(model.train_rl(groups, config))
    return EXIT_OK


def _train_sft(args: argparse.Namespace) -> int:
    """SFT through ``TrainableModel.train_sft``: rows are published where the model lives (the
    local artifact store, or a W&B artifact when hosted)."""
    if not (args.data or args.from_weave):
        raise ValueError("pass --data FILE|URL or --from-weave ENTITY/PROJECT")
    model = _model(args)
    data: Any = args.data
    if args.from_weave:
        data = _sft_rows_from_weave(args)
        if not data:
            raise ValueError(f"no SFT rows in Weave project {args.from_weave}")
    elif not data.startswith(("wandb-artifact:", "file://")):
        data = Path(data)
    settings = {"batch_size": args.batch_size, "learning_rate": args.learning_rate}
    config = {k: v for k, v in settings.items() if v} or None
    _print_result(model.train_sft(data, config, dataset_name=args.dataset))
    return EXIT_OK


def _sft_rows_from_weave(args: argparse.Namespace) -> list[dict]:
    """Rows from the rollouts this package exported, or (``--traces``) from the chat calls
    Weave's own integrations traced."""
    if args.traces:
        from wandb_serverless.rollouts.weave_traces import WeaveTraces

        traces = WeaveTraces(args.from_weave)
        return traces.sft_rows(top_k_per_prompt=args.top_k, min_score=args.min_reward)
    return weave_rollouts(args).export_sft_rows(
        top_k_per_group=args.top_k, min_reward=args.min_reward
    )


def add_commands(commands: Any) -> None:
    """wandb-serverless train rl|sft"""
    train = commands.add_parser("train", help="start a training job and follow it").add_subparsers(
        dest="action", required=True
    )
    train_rl = api_command(
        train, "rl", "one RL step on trajectory groups (from `rollouts export --format rl`)"
    )
    model_arguments(train_rl)
    train_rl.add_argument("--groups", help="JSON file with a list of trajectory groups")
    train_rl.add_argument(
        "--from-weave", metavar="ENTITY/PROJECT", help="the rollouts there, each once"
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
    train_sft = api_command(
        train, "sft", "SFT on a train.jsonl (published where the model lives) or an artifact URL"
    )
    model_arguments(train_sft)
    train_sft.add_argument("--data", help="train.jsonl path, or wandb-artifact:/// URL")
    train_sft.add_argument("--from-weave", metavar="ENTITY/PROJECT", help="rows from Weave")
    train_sft.add_argument(
        "--traces",
        action="store_true",
        help="--from-weave: from the chat calls Weave's integrations traced, not exported rollouts",
    )
    train_sft.add_argument("--top-k", type=int, default=1, help="--from-weave: best k per group")
    train_sft.add_argument("--min-reward", type=float, help="--from-weave: rows at least this good")
    train_sft.add_argument(
        "--dataset", help="artifact name to publish rows as (default: a fresh one per upload)"
    )
    train_sft.add_argument("--batch-size", type=int)
    train_sft.add_argument("--learning-rate", type=float)
    train_sft.set_defaults(handler=_train_sft)
