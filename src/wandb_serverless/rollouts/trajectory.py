"""Moved to ``wandb_serverless.trajectory`` (the training API's types need them without the
recorder); kept so that imports from here go on working."""

from wandb_serverless.trajectory import *  # noqa: F403
from wandb_serverless.trajectory import __all__ as __all__
