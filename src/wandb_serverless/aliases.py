"""Serving a chosen checkpoint under a named alias (``:production``), decided in one place:
on W&B the alias is a W&B artifact alias on the checkpoint's ``lora`` artifact, set with the
``wandb`` SDK (W&B moves it off the version that had it); on a local backend it is an alias the
server keeps and resolves like ``:latest``. ``served_aliases(model)`` picks the right one.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from wandb_serverless.api import Client
from wandb_serverless.config import wandb_sdk
from wandb_serverless.models import ALIAS_RULE, is_valid_alias

_STEP = re.compile(r"^step(\d+)$")


class TrainedModel(Protocol):
    """What aliases need of a model (``TrainableModel`` has it)."""

    client: Client
    id: str
    entity: str
    project: str
    name: str
    base_model: str

    @property
    def hosted(self) -> bool: ...


class ServedAliases(Protocol):
    def get(self, alias: str) -> int | None:
        """The step ``alias`` serves (0: the base model), None while it is set on none."""

    def set(self, alias: str, step: int) -> None:
        """Serve ``alias`` from checkpoint ``step`` (moved if it was on another)."""


def check_alias(alias: str) -> str:
    if not is_valid_alias(alias):
        raise ValueError(f"alias {alias!r} is not {ALIAS_RULE}")
    return alias


class LocalAliases:
    """Aliases the local backend keeps (``/v1/local/models/{id}/aliases``)."""

    def __init__(self, model: TrainedModel) -> None:
        self.model = model

    def get(self, alias: str) -> int | None:
        return self.model.client.local_aliases.list(self.model.id).get(check_alias(alias))

    def set(self, alias: str, step: int) -> None:
        self.model.client.local_aliases.set(self.model.id, check_alias(alias), int(step))


class WandbAliases:
    """W&B artifact aliases on the model's ``lora`` artifact (``entity/project/name``), whose
    versions carry ``stepN`` aliases (W&B's checkpoint layout)."""

    def __init__(self, model: TrainedModel) -> None:
        self.model = model

    def _api(self) -> Any:
        wandb = wandb_sdk("serving an alias on W&B")
        return wandb.Api(api_key=self.model.client.settings.require_api_key())

    def _name(self, alias: str) -> str:
        return f"{self.model.entity}/{self.model.project}/{self.model.name}:{alias}"

    def get(self, alias: str) -> int | None:
        api, name = self._api(), self._name(check_alias(alias))
        if not api.artifact_exists(name, type="lora"):
            return None
        steps = [
            int(m.group(1))
            for a in api.artifact(name, type="lora").aliases
            if (m := _STEP.match(a))
        ]
        return max(steps) if steps else None

    def set(self, alias: str, step: int) -> None:
        check_alias(alias)
        if int(step) <= 0:
            raise ValueError(
                "W&B serves an alias only on a trained checkpoint (step >= 1); serve the base "
                f"model by its name, {self.model.base_model!r}"
            )
        api, name = self._api(), self._name(f"step{int(step)}")
        if not api.artifact_exists(name, type="lora"):
            raise ValueError(f"W&B has no checkpoint artifact {name!r} (type lora)")
        artifact = api.artifact(name, type="lora")
        if alias not in artifact.aliases:
            artifact.aliases = [*artifact.aliases, alias]
            artifact.save()


def served_aliases(model: TrainedModel) -> ServedAliases:
    """W&B artifact aliases when the model lives on W&B, the local backend's otherwise."""
    return WandbAliases(model) if model.hosted else LocalAliases(model)
