"""wandb-serverless: run agents on W&B Inference and turn their runs into training data."""

from wandb_serverless.training import TrainableModel, TrainResult, plot_reward_curve
from wandb_serverless.version import __version__
from wandb_serverless.weave_training import WeaveTrainer

__all__ = ["TrainResult", "TrainableModel", "WeaveTrainer", "__version__", "plot_reward_curve"]
