"""``wandb-serverless rollouts``: recorded rollouts, in a local store or in Weave."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wandb_serverless.cli.common import (
    EXIT_OK,
    print_json,
)

if TYPE_CHECKING:  # imported when used: the CLI starts fast
    from wandb_serverless.rollouts import RolloutStore
    from wandb_serverless.rollouts.weave_source import WeaveRollouts


def _store(args: argparse.Namespace) -> RolloutStore:
    from wandb_serverless.rollouts import RolloutStore

    if not Path(args.store).exists():
        raise FileNotFoundError(f"no rollout store at {args.store}")
    return RolloutStore(args.store)


def _rollouts_list(args: argparse.Namespace) -> int:
    for trajectory in _store(args).query(group=args.group):
        meta = trajectory.metadata
        print_json(
            {
                "rollout_id": meta.get("rollout_id"),
                "group": meta.get("group"),
                "reward": trajectory.reward,
                "model_turns": trajectory.model_turns(),
                "metadata": meta,
            }
        )
    return EXIT_OK


def _rollouts_export(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.format == "rl":  # one group a line (what `train rl --groups` reads)
        rows = store.export_rl_groups()
    else:
        rows = store.export_sft_rows(top_k_per_group=args.top_k, min_reward=args.min_reward)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def weave_rollouts(args: argparse.Namespace) -> WeaveRollouts:
    from wandb_serverless.rollouts.weave_source import WeaveRollouts

    return WeaveRollouts(args.from_weave)


def _rollouts_import(args: argparse.Namespace) -> int:
    """Copy exported rollouts from Weave into a local store (again: the same rows, no copies)."""
    from wandb_serverless.rollouts import RolloutStore

    store = RolloutStore(args.store)
    count = 0
    for found in weave_rollouts(args).rollouts(group=args.group):
        group = found.trajectory.metadata.get("group")
        store.save(
            found.trajectory, group=None if group is None else str(group), exception=found.exception
        )
        count += 1
    print_json({"imported": count, "store": str(args.store), "from": args.from_weave})
    return EXIT_OK


def add_commands(commands: Any) -> None:
    """wandb-serverless rollouts list|export|import"""
    rollouts = commands.add_parser("rollouts", help="recorded rollouts").add_subparsers(
        dest="action", required=True
    )
    rl = rollouts.add_parser("list", help="list stored trajectories")
    rl.add_argument("--store", required=True, help="the RolloutStore SQLite file")
    rl.add_argument("--group")
    rl.set_defaults(handler=_rollouts_list)
    export = rollouts.add_parser(
        "export", help="export as RL job groups or SFT rows, one JSON object a line"
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
