"""wandb-serverless: run agents on W&B Inference and turn their runs into training data."""

__version__ = "0.1.0"
