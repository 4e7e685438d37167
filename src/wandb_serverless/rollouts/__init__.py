"""Rollouts: trajectories, groups, recording and storage of agent runs."""

from wandb_serverless.rollouts.recorder import (
    LLMCall,
    Rollout,
    current_rollout,
    role,
    rollout,
    step,
)
from wandb_serverless.rollouts.store import RolloutStore
from wandb_serverless.rollouts.weave_source import WeaveRollouts
from wandb_serverless.rollouts.weave_traces import WeaveTraces
from wandb_serverless.trajectory import Choice, History, Trajectory, TrajectoryGroup

__all__ = [
    "Choice",
    "History",
    "LLMCall",
    "Rollout",
    "RolloutStore",
    "Trajectory",
    "TrajectoryGroup",
    "WeaveRollouts",
    "WeaveTraces",
    "current_rollout",
    "role",
    "rollout",
    "step",
]
