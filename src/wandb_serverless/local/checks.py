"""Checks and summaries the training routes share: FastAPI-shaped 422s, finite rewards, and
the metrics a ``log`` call records."""

from __future__ import annotations

import math
from collections.abc import Sequence

from fastapi.exceptions import HTTPException

from wandb_serverless.api.types import LogRequest
from wandb_serverless.trajectory import TrajectoryGroup


def invalid(location: Sequence[object], message: str) -> HTTPException:
    """A 422 in FastAPI's own shape: ``{"detail": [{"loc", "msg", "type"}]}``."""
    return HTTPException(422, [{"loc": location, "msg": message, "type": "value_error"}])


def require_finite(groups: list[TrajectoryGroup]) -> None:
    """Rewards and metrics must be numbers: a NaN poisons training and every average."""
    for g, group in enumerate(groups):
        for t, trajectory in enumerate(group.trajectories):
            where: list[object] = ["body", "trajectory_groups", g, "trajectories", t]
            if not math.isfinite(trajectory.reward):
                raise invalid([*where, "reward"], "must be a finite number")
            for key, value in trajectory.metrics.items():
                if not math.isfinite(value):
                    raise invalid([*where, "metrics", key], "must be a finite number")


def log_metrics(request: LogRequest) -> dict[str, float]:
    """Per split: average reward, within-group reward std, exception rate, numeric metrics."""
    split = request.split
    rewards: list[float] = []
    stds: list[float] = []
    exceptions = 0
    sums: dict[str, list[float]] = {}
    for group in request.trajectory_groups:
        rewards += group.rewards
        stds.append(group.reward_std())
        exceptions += len(group.exceptions)
        for trajectory in group.trajectories:
            for key, value in trajectory.metrics.items():
                sums.setdefault(key, []).append(float(value))
    total = len(rewards) + exceptions
    metrics = {
        f"{split}/reward": sum(rewards) / len(rewards) if rewards else 0.0,
        f"{split}/reward_std_dev": sum(stds) / len(stds) if stds else 0.0,
        f"{split}/exception_rate": exceptions / total if total else 0.0,
    }
    metrics.update({f"{split}/{k}": sum(v) / len(v) for k, v in sums.items()})
    return metrics
