"""langchain-tests' unit suite, subclassed as partner packages do."""

from __future__ import annotations

import pytest
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

    @pytest.mark.xfail(
        reason="langchain-core's load(allowed_objects='all') admits only the classes in its own "
        "mapping of partner packages, which cannot list an out-of-tree package; the snapshot "
        "matches, and the same round trip with allowed_objects=[ChatWandb] passes in "
        "test_profile_and_serialization.py",
        raises=ValueError,
        strict=True,
    )
    def test_serdes(self, model, snapshot) -> None:
        super().test_serdes(model, snapshot)
