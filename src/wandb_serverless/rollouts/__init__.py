"""Rollouts: trajectories, groups, recording and storage of agent runs."""

from wandb_serverless.rollouts.trajectory import Choice, History, Trajectory, TrajectoryGroup

__all__ = ["Choice", "History", "Trajectory", "TrajectoryGroup"]
