"""Model profiles and serialisation, as LangChain and LlamaIndex users expect (issue 17, 6-7)."""

from __future__ import annotations

import json

import pytest
from langchain.agents import create_agent
from langchain_core.load import dumpd, dumps, load, loads
from llama_index.llms.wandb import WandbLLM
from pydantic import BaseModel, Field

from langchain_wandb import ChatWandb

SECRET = "wandb-key-that-must-never-be-serialised"


class Weather(BaseModel):
    """A weather report."""

    city: str = Field(max_length=20)
    temperature_celsius: int


def test_profile_of_a_known_wandb_model():
    llm = ChatWandb(model="meta-llama/Llama-3.1-8B-Instruct", api_key="k", project="t/p")
    assert llm.profile["max_input_tokens"] == 128_000
    assert llm.profile["tool_calling"] and llm.profile["structured_output"]
    assert llm.profile["reasoning_output"] is False
    reasoning = ChatWandb(model="openai/gpt-oss-20b", api_key="k", project="t/p").profile
    assert reasoning["reasoning_output"] and "high" in reasoning["reasoning_effort_levels"]
    checkpoint = ChatWandb(model="wandb-artifact:///t/p/agent:latest", api_key="k").profile
    assert checkpoint["tool_calling"] and "max_input_tokens" not in checkpoint


def test_an_explicit_profile_wins():
    llm = ChatWandb(model="default", api_key="k", profile={"max_input_tokens": 7})
    assert llm.profile == {"max_input_tokens": 7}


def test_create_agent_picks_the_native_structured_output_strategy(backend):
    """With the profile, create_agent sends the schema as response_format (decoding constrained
    on the server) instead of a tool the model must choose to call."""
    llm = ChatWandb(
        model="default", base_url=backend.base_url, api_key=backend.api_key, temperature=0,
        max_tokens=64,
    )  # fmt: skip
    agent = create_agent(llm, tools=[], response_format=Weather)
    state = agent.invoke({"messages": [("user", "Weather in Oslo?")]})
    assert isinstance(state["structured_response"], Weather)
    ai = [m for m in state["messages"] if m.type == "ai"][-1]
    assert (
        ai.tool_calls == [] and json.loads(ai.content)["city"] == state["structured_response"].city
    )


def test_llamaindex_context_window_comes_from_the_same_table():
    assert WandbLLM(model="OpenPipe/Qwen3-14B-Instruct", api_key="k").metadata.context_window == (
        32_768
    )
    assert WandbLLM(model="x", api_key="k", context_window=5).metadata.context_window == 5


# -- serialisation --------------------------------------------------------------------------


def test_chat_wandb_round_trips_through_dumpd_and_loads_without_its_key(monkeypatch):
    llm = ChatWandb(
        model="meta-llama/Llama-3.1-8B-Instruct",
        api_key=SECRET,
        project="team/agents",
        temperature=0.2,
        top_k=20,
        max_tokens=99,
    )
    text = dumps(llm)
    assert SECRET not in text and SECRET not in json.dumps(dumpd(llm))
    assert dumpd(llm)["kwargs"]["api_key"] == {"lc": 1, "type": "secret", "id": ["WANDB_API_KEY"]}
    again = loads(
        text,
        secrets_map={"WANDB_API_KEY": "another-key"},
        valid_namespaces=["langchain_wandb"],
        allowed_objects=[ChatWandb],
    )
    assert isinstance(again, ChatWandb)
    assert (again.model, again.temperature, again.top_k, again.max_tokens) == (
        llm.model, 0.2, 20, 99,
    )  # fmt: skip
    assert again.project == "team/agents" and again.api_key.get_secret_value() == "another-key"
    monkeypatch.setenv("WANDB_API_KEY", "from-env")
    from_env = load(
        dumpd(llm),
        secrets_from_env=True,
        valid_namespaces=["langchain_wandb"],
        allowed_objects=[ChatWandb],
    )
    assert from_env.api_key.get_secret_value() == "from-env"


def test_wandb_llm_round_trips_through_to_dict_without_its_key(monkeypatch):
    llm = WandbLLM(
        model="OpenPipe/Qwen3-14B-Instruct",
        api_key=SECRET,
        base_url="http://127.0.0.1:9/v1",
        temperature=0.4,
        top_k=7,
    )
    data, text = llm.to_dict(), llm.to_json()
    assert "api_key" not in data and SECRET not in text
    monkeypatch.setenv("WANDB_API_KEY", "from-env")
    again = WandbLLM.from_json(text)
    assert (again.model, again.base_url, again.temperature, again.top_k) == (
        llm.model, llm.base_url, 0.4, 7,
    )  # fmt: skip
    assert again.api_key.get_secret_value() == "from-env"  # resolved again, never stored
    assert WandbLLM.from_dict(data).class_name() == "WandbLLM"


@pytest.mark.parametrize("make", [repr, str])
def test_reprs_still_hide_the_key(make):
    assert SECRET not in make(ChatWandb(model="m", api_key=SECRET))
    assert SECRET not in make(WandbLLM(model="m", api_key=SECRET))
