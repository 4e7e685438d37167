"""The embedded local backend: W&B's HTTP API with a real model on CPU (extra ``[local]``)."""

from wandb_serverless.local.server import LocalBackend

__all__ = ["LocalBackend"]
