"""LlamaIndex integration for W&B Inference and W&B Serverless Training."""

from llama_index.llms.wandb.base import WandbLLM

__all__ = ["WandbLLM"]
