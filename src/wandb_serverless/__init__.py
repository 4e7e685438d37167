"""wandb-serverless: run agents on W&B Inference and turn their runs into training data."""

from wandb_serverless import capture  # noqa: F401  (rollouts capture openai SDK calls)
from wandb_serverless.capture import capture_openai
from wandb_serverless.training import TrainableModel, TrainResult, plot_reward_curve
from wandb_serverless.version import __version__
from wandb_serverless.weave_training import WeaveTrainer

__all__ = [
    "TrainResult",
    "TrainableModel",
    "WeaveTrainer",
    "__version__",
    "capture_openai",
    "plot_reward_curve",
]
