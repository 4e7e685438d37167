"""What a model can hold comes from the server that serves it, when the server says: a local
backend serving SmolLM2 under a W&B model's name has SmolLM2's window, not the W&B model's."""

from __future__ import annotations

import pytest
from llama_index.llms.wandb import WandbLLM
from support.fixtures import MODEL_CACHE

from langchain_wandb import ChatWandb
from wandb_serverless import profiles
from wandb_serverless.local import LocalBackend

W_AND_B_NAME = "meta-llama/Llama-3.1-8B-Instruct"  # 128,000 tokens in W&B's catalogue


@pytest.fixture(scope="module")
def renamed(tmp_path_factory):
    with LocalBackend.start(
        data_dir=tmp_path_factory.mktemp("renamed"),
        model_cache_dir=MODEL_CACHE,
        served_model_names=[W_AND_B_NAME],
    ) as backend:
        yield backend


def test_both_adapters_take_the_window_the_server_reports(renamed):
    served = renamed.app.state.backend.engine.context_length
    assert served == 8192 and profiles.context_window(W_AND_B_NAME) == 128_000
    llm = WandbLLM(model=W_AND_B_NAME, api_base=renamed.base_url, api_key=renamed.api_key)
    assert llm.metadata.context_window == served
    chat = ChatWandb(model=W_AND_B_NAME, base_url=renamed.base_url, api_key=renamed.api_key)
    assert chat.profile["max_input_tokens"] == served


def test_w_and_b_is_not_asked_and_the_catalogue_stands():
    """W&B's /v1/models lists ids only (its API reference): the table's window is used."""
    hosted = ChatWandb(
        model=W_AND_B_NAME, api_key="k", base_url="https://api.inference.wandb.ai/v1"
    )
    assert hosted.profile["max_input_tokens"] == 128_000
    llm = WandbLLM(model=W_AND_B_NAME, api_key="k", project="team/p")
    assert llm.metadata.context_window == 128_000


def test_a_server_that_cannot_be_asked_leaves_the_catalogue_window():
    unreachable = ChatWandb(model=W_AND_B_NAME, api_key="k", base_url="http://127.0.0.1:9/v1")
    assert unreachable.profile["max_input_tokens"] == 128_000
