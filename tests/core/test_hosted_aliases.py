"""The hosted promotion path, pinned: on W&B a served alias is a W&B artifact alias on the
checkpoint's ``lora`` artifact (``entity/project/name:stepN``), set with the ``wandb`` SDK.
The SDK is faked with the calls its public API takes (``wandb.Api(api_key=...)``,
``api.artifact_exists(name, type=)``, ``api.artifact(name, type=)``, ``artifact.aliases``
read and assigned, ``artifact.save()``) and W&B's rule that an alias names one version of a
collection: setting it on one version moves it off the other."""

from __future__ import annotations

import sys
import types

import pytest
from support.fault_server import Reply

from wandb_serverless import TrainableModel
from wandb_serverless.api import Client

KEY = "wb-hosted-key-0123456789abcdef"
MODEL = {"id": "m-1", "entity": "team", "project": "p", "name": "agent", "base_model": "b"}


class Registry:
    """W&B's artifact collection ``team/p/agent`` (type lora): versions and their aliases."""

    def __init__(self, steps: int) -> None:
        self.versions = {
            f"v{s - 1}": [f"step{s}", *(["latest"] if s == steps else [])]
            for s in range(1, steps + 1)
        }
        self.calls: list[tuple] = []

    def find(self, name: str) -> str | None:
        path, _, alias = name.rpartition(":")
        assert path == "team/p/agent", path
        return next((v for v, aliases in self.versions.items() if alias in aliases), None)


class Artifact:
    def __init__(self, registry: Registry, version: str) -> None:
        self.registry, self.version = registry, version
        self._aliases = list(registry.versions[version])

    @property
    def aliases(self) -> list[str]:
        return self._aliases

    @aliases.setter
    def aliases(self, value: list[str]) -> None:
        self.registry.calls.append(("set aliases", self.version, list(value)))
        self._aliases = list(value)

    def save(self) -> None:
        self.registry.calls.append(("save", self.version))
        for version, aliases in self.registry.versions.items():  # an alias names one version
            if version != self.version:
                aliases[:] = [a for a in aliases if a not in self._aliases or a.startswith("step")]
        self.registry.versions[self.version] = list(self._aliases)


@pytest.fixture
def wandb_sdk(monkeypatch):
    registry = Registry(steps=3)

    class Api:
        def __init__(self, api_key: str) -> None:
            registry.calls.append(("Api", api_key))

        def artifact_exists(self, name: str, type: str | None = None) -> bool:
            registry.calls.append(("artifact_exists", name, type))
            return registry.find(name) is not None

        def artifact(self, name: str, type: str | None = None) -> Artifact:
            registry.calls.append(("artifact", name, type))
            version = registry.find(name)
            if version is None:
                raise ValueError(f"artifact {name} not found")
            return Artifact(registry, version)

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Api))
    return registry


@pytest.fixture
def hosted_model(monkeypatch, fault_server, tmp_path, wandb_sdk) -> TrainableModel:
    monkeypatch.setenv("WANDB_SERVERLESS_LOCAL", "0")
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    checkpoints = [{"id": f"c{s}", "step": s, "metrics": {}} for s in (1, 2, 3)]
    fault_server.on("POST", "/preview/models", Reply(200, MODEL))
    fault_server.on(
        "GET",
        "/preview/models/m-1/checkpoints",
        Reply(200, {"data": checkpoints, "has_more": False}),
    )
    return TrainableModel(
        "agent", "p", "b", entity="team", client=Client(base_url=fault_server.url),
        progress=False, history_dir=tmp_path,
    )  # fmt: skip


def test_promoting_sets_the_alias_on_the_steps_artifact_with_the_key_given(hosted_model, wandb_sdk):
    assert hosted_model.served_step() is None  # no version has it yet
    wandb_sdk.calls.clear()
    ref = hosted_model.promote(2)
    assert ref == "wandb-artifact:///team/p/agent:production"
    assert wandb_sdk.calls == [
        ("Api", KEY),
        ("artifact_exists", "team/p/agent:step2", "lora"),
        ("artifact", "team/p/agent:step2", "lora"),
        ("set aliases", "v1", ["step2", "production"]),
        ("save", "v1"),
    ]
    assert hosted_model.served_step() == 2


def test_promoting_again_moves_the_alias_and_a_promoted_step_is_not_saved_twice(
    hosted_model, wandb_sdk
):
    hosted_model.promote(2)
    hosted_model.promote(3)
    assert wandb_sdk.versions["v1"] == ["step2"] and "production" in wandb_sdk.versions["v2"]
    assert hosted_model.served_step() == 3
    saves = len([c for c in wandb_sdk.calls if c[0] == "save"])
    hosted_model.promote(3)  # already there: nothing to save
    assert len([c for c in wandb_sdk.calls if c[0] == "save"]) == saves


def test_the_base_model_and_a_missing_step_are_clear_errors_before_anything_changes(
    hosted_model, wandb_sdk
):
    with pytest.raises(ValueError, match=r"no checkpoint at step 7 \(checkpoints: 1..3\)"):
        hosted_model.promote(7)
    with pytest.raises(ValueError, match="serve the base model by its name, 'b'"):
        hosted_model.promote(0)
    assert not [c for c in wandb_sdk.calls if c[0] == "save"]


def test_without_the_wandb_sdk_the_error_names_the_extra(hosted_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails
    with pytest.raises(ImportError, match=r"pip install 'wandb-serverless\[wandb\]'"):
        hosted_model.promote(1)
