"""Against the real W&B services (docs/hosted.md): they run when WANDB_API_KEY is set and are
skipped, with that reason, otherwise (nothing else in the suite reaches W&B).

    WANDB_API_KEY=... WANDB_ENTITY=my-team WANDB_PROJECT=my-project \\
        .venv/bin/python -m pytest -m live tests/live
"""

from __future__ import annotations

import os
import uuid

import pytest
from pydantic import BaseModel

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not os.environ.get("WANDB_API_KEY"),
        reason="live W&B tests need WANDB_API_KEY (and WANDB_ENTITY/WANDB_PROJECT)",
    ),
]
CHAT_MODEL = os.environ.get("WANDB_LIVE_CHAT_MODEL", "meta-llama/Llama-3.1-8B-Instruct")
BASE_MODEL = os.environ.get("WANDB_LIVE_BASE_MODEL", "OpenPipe/Qwen3-14B-Instruct")


def test_lists_the_inference_models():
    from wandb_serverless.api import Client

    assert Client().list_models()


def test_one_chat_call_with_tools_and_structured_output():
    from langchain_core.tools import tool

    from langchain_wandb import ChatWandb

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        return "sunny"

    class City(BaseModel):
        name: str

    llm = ChatWandb(model=CHAT_MODEL, max_tokens=64)
    calls = llm.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?").tool_calls
    assert calls and calls[0]["name"] == "get_weather"
    assert llm.with_structured_output(City).invoke("Name a city in France.").name


def test_registers_and_deletes_a_model():
    from wandb_serverless.api import Client

    client = Client()
    project = os.environ.get("WANDB_PROJECT", "wandb-serverless-live")
    model = client.models.create(
        project=project,
        name=f"live-{uuid.uuid4().hex[:8]}",
        base_model=BASE_MODEL,
        return_existing=True,
    )
    try:
        assert model.id and model.entity
    finally:
        client.models.delete(model.id)
