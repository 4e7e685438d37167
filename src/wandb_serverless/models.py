"""Model references: plain base-model ids and W&B artifact references to trained checkpoints.

``wandb-artifact:///entity/project/name[:stepN|:latest|:alias]`` (two slashes are accepted too).
No suffix means the latest checkpoint; ``:step0`` is the base model; any other alias (say
``:production``) is the checkpoint that alias is set on (``TrainableModel.promote``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "wandb-artifact:"
CHECKPOINT_FORM = "wandb-artifact:///entity/project/name[:stepN|:latest|:alias]"
ARTIFACT_FORM = "wandb-artifact:///entity/project/name[:alias]"

# W&B's names: letters, digits, '-', '_', '.'; here also at most 128 characters, not starting
# with '.', and never '..' (so a name is always one safe path segment).
_SEGMENT = r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}"
NAME_RULE = "1-128 letters, digits, '-', '_' or '.', not starting with '.', without '..'"
_NAME_RE = re.compile(rf"^{_SEGMENT}$")
MAX_STEP = 2**63 - 1
_ARTIFACT_RE = re.compile(
    rf"^wandb-artifact:///?(?P<entity>{_SEGMENT})/(?P<project>{_SEGMENT})/(?P<name>{_SEGMENT})"
    rf"(?::(?P<alias>{_SEGMENT}))?$"
)
_STEP_RE = re.compile(r"^step(\d+)$")
_VERSION_RE = re.compile(r"^v\d+$")  # an artifact version number: not a step
#: A named alias on a checkpoint (``production``, ``staging``): starts with a letter.
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
ALIAS_RULE = "1-64 letters, digits, '-' or '_', starting with a letter (not stepN, vN or latest)"


def is_valid_alias(alias: str) -> bool:
    """A name a checkpoint can be served as besides ``stepN`` and ``latest``."""
    return (
        isinstance(alias, str)
        and bool(_ALIAS_RE.match(alias))
        and alias != "latest"
        and not _STEP_RE.match(alias)
        and not _VERSION_RE.match(alias)
    )


@dataclass(frozen=True)
class ArtifactRef:
    """A parsed ``wandb-artifact://`` URL."""

    entity: str
    project: str
    name: str
    alias: str | None = None

    @classmethod
    def parse(cls, url: str, *, form: str = ARTIFACT_FORM) -> ArtifactRef:
        match = _ARTIFACT_RE.match(url.strip()) if isinstance(url, str) else None
        if match is None or ".." in url:
            raise ValueError(f"artifact reference {url!r} is not of the form {form}")
        return cls(**match.groupdict())

    @property
    def path(self) -> str:
        """``entity/project/name``, the artifact's path without alias."""
        return f"{self.entity}/{self.project}/{self.name}"

    def __str__(self) -> str:
        suffix = f":{self.alias}" if self.alias else ""
        return f"wandb-artifact:///{self.path}{suffix}"


@dataclass(frozen=True)
class CheckpointRef(ArtifactRef):
    """A trained model checkpoint: ``step`` is None for the latest one."""

    @classmethod
    def parse(cls, url: str, *, form: str = CHECKPOINT_FORM) -> CheckpointRef:
        try:
            ref = ArtifactRef.parse(url, form=form)
        except ValueError:
            raise ValueError(f"model reference {url!r} is not of the form {form}") from None
        step = _STEP_RE.match(ref.alias or "")
        if step and int(step.group(1)) > MAX_STEP:
            raise ValueError(f"model reference {url!r} has a step beyond {MAX_STEP} ({form})")
        if ref.alias not in (None, "latest") and not step and not is_valid_alias(ref.alias):
            hint = " (artifact versions vN are not steps)" if _VERSION_RE.match(ref.alias) else ""
            raise ValueError(
                f"model reference {url!r} has alias {ref.alias!r}; expected :stepN, :latest or "
                f"a named alias of {ALIAS_RULE}{hint} ({form})"
            )
        return cls(ref.entity, ref.project, ref.name, ref.alias)

    @classmethod
    def of(cls, entity: str, project: str, name: str, step: int | None = None) -> CheckpointRef:
        return cls(entity, project, name, "latest" if step is None else f"step{int(step)}")

    @property
    def step(self) -> int | None:
        """The pinned step, or None ("latest" or a named alias)."""
        match = _STEP_RE.match(self.alias or "")
        return int(match.group(1)) if match else None

    @property
    def named_alias(self) -> str | None:
        """The named alias (``production``), None for ``stepN`` and latest."""
        if self.alias in (None, "latest") or _STEP_RE.match(self.alias or ""):
            return None
        return self.alias

    def named(self, alias: str) -> CheckpointRef:
        """The same model served under a named alias."""
        if not is_valid_alias(alias):
            raise ValueError(f"alias {alias!r} is not {ALIAS_RULE}")
        return CheckpointRef(self.entity, self.project, self.name, alias)

    def at(self, step: int | None) -> CheckpointRef:
        """The same model at another step (None: latest)."""
        return CheckpointRef.of(self.entity, self.project, self.name, step)


def is_valid_name(value: str) -> bool:
    """An entity, project, model or artifact name that W&B accepts and a path can hold."""
    return isinstance(value, str) and bool(_NAME_RE.match(value)) and ".." not in value


def parse_model(model: str) -> str | CheckpointRef:
    """A base-model id stays a string; an artifact reference becomes a CheckpointRef."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty string, got {model!r}")
    model = model.strip()
    if model.startswith(SCHEME):
        return CheckpointRef.parse(model)
    if any(ch.isspace() for ch in model):
        raise ValueError(f"model id {model!r} must not contain whitespace")
    return model


def is_checkpoint(model: str) -> bool:
    return isinstance(model, str) and model.strip().startswith(SCHEME)
