"""LangChain integration for W&B Inference and W&B Serverless Training."""

from langchain_wandb.callbacks import RolloutCallbackHandler
from langchain_wandb.chat_models import ChatWandb

__all__ = ["ChatWandb", "RolloutCallbackHandler"]
