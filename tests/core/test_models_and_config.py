"""Model references and settings resolution."""

from __future__ import annotations

import pytest

from wandb_serverless.config import MissingAPIKeyError, Settings
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


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="WANDB_API_KEY"):
        Settings.resolve().require_api_key()
