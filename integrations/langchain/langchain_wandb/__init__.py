"""LangChain integration for W&B Inference and W&B Serverless Training."""
