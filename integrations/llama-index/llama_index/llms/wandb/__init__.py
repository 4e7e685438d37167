"""LlamaIndex integration for W&B Inference and W&B Serverless Training."""

from llama_index.llms.wandb.base import WandbLLM
from llama_index.llms.wandb.instrumentation import RolloutEventHandler

__all__ = ["RolloutEventHandler", "WandbLLM"]
