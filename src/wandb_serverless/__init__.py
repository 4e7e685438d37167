"""wandb-serverless: run agents on W&B Inference and turn their runs into training data."""

__version__ = "0.1.0"

from wandb_serverless.training import TrainableModel, TrainResult, plot_reward_curve

__all__ = ["TrainResult", "TrainableModel", "__version__", "plot_reward_curve"]
