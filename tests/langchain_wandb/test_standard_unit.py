"""langchain-tests' unit suite, subclassed as partner packages do."""

from __future__ import annotations

from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_wandb import ChatWandb


class TestChatWandbUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatWandb]:
        return ChatWandb

    @property
    def chat_model_params(self) -> dict:
        return {"model": "meta-llama/Llama-3.1-8B-Instruct"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {"WANDB_API_KEY": "api_key", "WANDB_PROJECT": "me/agents"},
            {"model": "meta-llama/Llama-3.1-8B-Instruct"},
            {"api_key": "api_key", "project": "me/agents"},
        )
