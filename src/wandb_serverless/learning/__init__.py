"""The learning loop: a production agent that gets better from its own runs, safely.

``LearningLoop(model, rollout_fn, train_scenarios=..., eval_scenarios=...).run(steps)`` samples
groups of rollouts, trains RL steps, evaluates every checkpoint on held-out scenarios and serves
it as ``:production`` only when it is not worse than what is served; sampling overlaps training
within a staleness bound, every decision is journaled, and a stopped loop resumes.
"""

from wandb_serverless.learning.journal import LoopLockedError
from wandb_serverless.learning.loop import LearningLoop, decide
from wandb_serverless.learning.report import StepReport
from wandb_serverless.learning.sampling import RolloutFn, Sampling
from wandb_serverless.usage import judging

__all__ = [
    "LearningLoop",
    "LoopLockedError",
    "RolloutFn",
    "Sampling",
    "StepReport",
    "decide",
    "judging",
]
