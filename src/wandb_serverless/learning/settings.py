"""The learning loop's settings, checked before anything runs: each bad one is a ValueError
that names it and says what it takes."""

from __future__ import annotations

from typing import Any

from wandb_serverless.models import ALIAS_RULE, is_valid_alias

WHOLE_POSITIVE = (
    "min_trainable_groups",
    "group_size",
    "groups_per_step",
    "max_rounds",
    "eval_samples",
    "max_concurrent_rollouts",
)


def check_settings(args: dict[str, Any]) -> None:
    if not args["eval_scenarios"]:
        raise ValueError("eval_scenarios is empty: the loop serves only checkpoints it evaluated")
    if not args["train_scenarios"]:
        raise ValueError("train_scenarios is empty: there is nothing to sample")
    for name in WHOLE_POSITIVE:
        if not _whole(args[name], 1):
            raise ValueError(f"{name} must be a whole number >= 1, not {args[name]!r}")
    if args["group_size"] < 2:
        raise ValueError("group_size must be at least 2: advantages compare rollouts of a group")
    if not _whole(args["max_steps_off_policy"], 0):
        value = args["max_steps_off_policy"]
        raise ValueError(f"max_steps_off_policy must be a whole number >= 0, not {value!r}")
    if args["sample_from"] not in ("latest", "promoted"):
        raise ValueError(f"sample_from must be 'latest' or 'promoted', not {args['sample_from']!r}")
    if args["after_rejection"] not in ("continue", "restore"):
        value = args["after_rejection"]
        raise ValueError(f"after_rejection must be 'continue' or 'restore', not {value!r}")
    if args["after_rejection"] == "restore" and args["max_steps_off_policy"] != 0:
        raise ValueError(
            "after_rejection='restore' samples each step after the last checkpoint is judged: "
            "set max_steps_off_policy=0"
        )
    if not is_valid_alias(args["alias"]):
        raise ValueError(f"alias {args['alias']!r} is not {ALIAS_RULE}")
    if not isinstance(args["tolerance"], int | float) or not args["tolerance"] >= 0:
        raise ValueError(f"tolerance must be a number >= 0, not {args['tolerance']!r}")
    timeout = args["rollout_timeout"]
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ValueError(f"rollout_timeout must be > 0 seconds (or None), not {timeout!r}")
    discount = args["step_discount"]
    if not isinstance(discount, int | float) or not 0 <= discount <= 1:
        raise ValueError(f"step_discount must be a number from 0 to 1, not {discount!r}")
    if args["role"] is not None and (not isinstance(args["role"], str) or not args["role"]):
        raise ValueError(f"role must be a role's name (or None), not {args['role']!r}")
    for name in ("rollout_fn", "eval_fn", "score_group"):
        if args[name] is not None and not callable(args[name]):
            raise ValueError(f"{name} must be callable, not {type(args[name]).__name__}")


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least
