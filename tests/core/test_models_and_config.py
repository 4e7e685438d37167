"""Model references and settings resolution."""

from __future__ import annotations

import argparse

import pytest

from wandb_serverless.config import (
    DEFAULT_INFERENCE_BASE_URL,
    DEFAULT_TRAINING_BASE_URL,
    MissingAPIKeyError,
    Settings,
)
from wandb_serverless.models import ArtifactRef, CheckpointRef, parse_model


@pytest.mark.parametrize(
    ("text", "step"),
    [
        ("wandb-artifact:///me/agents/sql-agent:step12", 12),
        ("wandb-artifact://me/agents/sql-agent:step12", 12),
        ("wandb-artifact:///me/agents/sql-agent:latest", None),
        ("wandb-artifact:///me/agents/sql-agent", None),
    ],
)
def test_checkpoint_references_parse_with_two_or_three_slashes(text, step):
    ref = parse_model(text)
    assert isinstance(ref, CheckpointRef)
    assert (ref.entity, ref.project, ref.name, ref.step) == ("me", "agents", "sql-agent", step)


def test_checkpoint_reference_formats_back_with_three_slashes():
    ref = CheckpointRef.parse("wandb-artifact://me/agents/sql-agent:step3")
    assert str(ref) == "wandb-artifact:///me/agents/sql-agent:step3"
    assert str(ref.at(None)) == "wandb-artifact:///me/agents/sql-agent:latest"


@pytest.mark.parametrize(
    "bad", ["wandb-artifact://x", "wandb-artifact:///a/b", "wandb-artifact:///a/b/c:v1"]
)
def test_malformed_reference_is_a_value_error_showing_the_form(bad):
    with pytest.raises(
        ValueError, match=r"wandb-artifact:///entity/project/name\[:stepN\|:latest\|:alias\]"
    ) as err:
        parse_model(bad)
    assert repr(bad) in str(err.value)


def test_an_artifact_version_is_not_taken_for_a_step():
    with pytest.raises(ValueError, match="artifact versions vN are not steps"):
        parse_model("wandb-artifact:///a/b/c:v1")


def test_a_named_alias_is_a_checkpoint_reference_of_no_fixed_step():
    ref = parse_model("wandb-artifact:///me/agents/sql-agent:production")
    assert isinstance(ref, CheckpointRef)
    assert (ref.step, ref.named_alias, str(ref)) == (
        None,
        "production",
        "wandb-artifact:///me/agents/sql-agent:production",
    )
    assert parse_model("wandb-artifact:///me/agents/sql-agent:latest").named_alias is None
    assert str(ref.at(3).named("staging")) == "wandb-artifact:///me/agents/sql-agent:staging"
    with pytest.raises(ValueError, match="starting with a letter"):
        ref.named("step3")


def test_base_model_ids_stay_plain_strings():
    assert (
        parse_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    with pytest.raises(ValueError):
        parse_model("  ")


def test_dataset_artifacts_accept_any_alias():
    ref = ArtifactRef.parse("wandb-artifact:///me/agents/sft-data:v0")
    assert ref.alias == "v0" and ref.path == "me/agents/sft-data"


def test_settings_read_environment_and_split_entity_from_project(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_PROJECT", "team/agents")
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    settings = Settings.resolve()
    assert settings.require_api_key() == "k" * 40
    assert (settings.entity, settings.project, settings.openai_project) == (
        "team",
        "agents",
        "team/agents",
    )
    assert "k" * 40 not in repr(settings)


def test_explicit_arguments_win_over_environment(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "env-key")
    monkeypatch.setenv("WANDB_SERVERLESS_BASE_URL", "http://127.0.0.1:1/v1")
    settings = Settings.resolve(api_key="arg-key", base_url="http://127.0.0.1:2/v1/")
    assert settings.require_api_key() == "arg-key"
    assert settings.training_base_url == settings.inference_base_url == "http://127.0.0.1:2/v1"


URL_VARIABLES = ("WANDB_SERVERLESS_BASE_URL", "WANDB_INFERENCE_BASE_URL", "WANDB_TRAINING_BASE_URL")


@pytest.mark.parametrize(
    "present",
    [
        tuple(name for bit, name in enumerate(URL_VARIABLES) if mask >> bit & 1)
        for mask in range(2 ** len(URL_VARIABLES))
    ],
    ids=lambda present: "+".join(name.split("_")[1] for name in present) or "none",
)
def test_adapters_trainer_and_cli_agree_on_every_combination_of_url_variables(monkeypatch, present):
    """The documented precedence (wandb_serverless.config): an endpoint's own variable, then
    WANDB_SERVERLESS_BASE_URL, then W&B. ChatWandb and WandbLLM chat where the trainer's
    client chats; the trainer and the CLI train at the same place."""
    from llama_index.llms.wandb import WandbLLM

    from langchain_wandb import ChatWandb
    from wandb_serverless.api import Client
    from wandb_serverless.cli.common import client as cli_client

    urls = {name: f"http://127.0.0.{n + 1}:9/v1" for n, name in enumerate(URL_VARIABLES)}
    for name in URL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in present:
        monkeypatch.setenv(name, urls[name])
    env = {name: urls[name] for name in present}
    shared = env.get("WANDB_SERVERLESS_BASE_URL")
    inference = env.get("WANDB_INFERENCE_BASE_URL") or shared or DEFAULT_INFERENCE_BASE_URL
    training = env.get("WANDB_TRAINING_BASE_URL") or shared or DEFAULT_TRAINING_BASE_URL

    chat_model = ChatWandb(api_key="k", project="team/p")
    llm = WandbLLM(api_key="k", project="team/p")
    trainer_client = Client(api_key="k")  # what TrainableModel and LearningLoop build
    cli = cli_client(argparse.Namespace(api_key="k", base_url=None))
    chat_urls = {
        "ChatWandb": str(chat_model._client().base_url).rstrip("/"),
        "WandbLLM": str(llm._client().base_url).rstrip("/"),
        "Client.openai()": str(trainer_client.openai().base_url).rstrip("/"),
    }
    assert chat_urls == dict.fromkeys(chat_urls, inference)
    assert trainer_client.base_url == cli.base_url == training

    # an argument beats every variable, the endpoint's own argument beats base_url
    explicit = "http://127.0.0.9:9/v1"
    assert ChatWandb(api_key="k", base_url=explicit)._settings().inference_base_url == explicit
    assert WandbLLM(api_key="k", base_url=explicit).base_url == explicit
    assert Client(api_key="k", base_url=explicit).openai().base_url == explicit + "/"
    both = Settings.resolve(base_url=explicit, inference_base_url="http://127.0.0.8:9/v1")
    assert (both.training_base_url, both.inference_base_url) == (
        explicit,
        "http://127.0.0.8:9/v1",
    )


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="WANDB_API_KEY"):
        Settings.resolve().require_api_key()
