"""Where requests go and with which credentials: the one place that resolves them.

Precedence for every setting: explicit argument, then environment, then default. For the two
endpoints, within each level the endpoint's own setting comes before the shared one:

1. ``inference_base_url=`` / ``training_base_url=`` (``ChatWandb(base_url=...)`` and
   ``WandbLLM(base_url=...)`` are the inference one),
2. ``base_url=`` (``Client(base_url=...)``, the CLI's ``--base-url``: both endpoints),
3. ``WANDB_INFERENCE_BASE_URL`` / ``WANDB_TRAINING_BASE_URL``,
4. ``WANDB_SERVERLESS_BASE_URL`` (both endpoints),
5. W&B's own endpoints.

The adapters, ``Client``/``AsyncClient``, the trainer and the CLI all resolve through
``Settings.resolve``, so they agree on every combination (tests/core/test_models_and_config.py).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

DEFAULT_TRAINING_BASE_URL = "https://api.training.wandb.ai/v1"
DEFAULT_INFERENCE_BASE_URL = "https://api.inference.wandb.ai/v1"

ENV_API_KEY = "WANDB_API_KEY"
ENV_ENTITY = "WANDB_ENTITY"
ENV_PROJECT = "WANDB_PROJECT"
#: Points every endpoint (training and inference) at one server, e.g. a local backend.
ENV_BASE_URL = "WANDB_SERVERLESS_BASE_URL"
ENV_TRAINING_BASE_URL = "WANDB_TRAINING_BASE_URL"
ENV_INFERENCE_BASE_URL = "WANDB_INFERENCE_BASE_URL"


#: "1": the endpoints are a wandb-serverless local backend (LocalBackend says so itself); "0":
#: they are W&B's (or a proxy to them), even on a loopback address.
ENV_LOCAL = "WANDB_SERVERLESS_LOCAL"


class MissingEntityError(ValueError):
    """W&B needs ``entity/project``; only a bare project was configured and no entity found."""

    def __init__(self, project: str, why: str) -> None:
        super().__init__(
            f"W&B needs the project as 'entity/project', but only {project!r} was given and "
            f"the key's default entity could not be found ({why}): pass project='team/"
            f"{project}', entity='team', or set {ENV_ENTITY}."
        )


_DEFAULT_ENTITIES: dict[str, str] = {}  # sha256(key) -> the key's default entity


WANDB_EXTRA = "pip install 'wandb-serverless[wandb]'"


def wandb_sdk(purpose: str) -> Any:
    """The ``wandb`` module, or an ImportError that says what needs it and how to install it."""
    try:
        import wandb
    except ImportError:
        raise ImportError(f"{purpose} needs the wandb SDK: {WANDB_EXTRA}") from None
    return wandb


def default_entity(api_key: str) -> str:
    """The key's default W&B entity, asked once per key through the ``wandb`` SDK."""
    import hashlib

    digest = hashlib.sha256(api_key.encode()).hexdigest()
    if digest not in _DEFAULT_ENTITIES:
        wandb = wandb_sdk("looking up the key's default W&B entity")
        entity = wandb.Api(api_key=api_key).default_entity
        if not entity:
            raise LookupError("the W&B API returned no default entity")
        _DEFAULT_ENTITIES[digest] = entity
    return _DEFAULT_ENTITIES[digest]


class MissingAPIKeyError(ValueError):
    """Raised when no API key was given and WANDB_API_KEY is unset."""

    def __init__(self) -> None:
        super().__init__(
            f"No W&B API key: pass api_key=... or set {ENV_API_KEY} "
            "(get one at https://wandb.ai/authorize)."
        )


def is_wandb_url(url: str) -> bool:
    """True for W&B's own services (``*.wandb.ai``), False for a local backend or any server."""
    from urllib.parse import urlsplit

    host = (urlsplit(_strip(str(url))).hostname or "").lower()
    return host == "wandb.ai" or host.endswith(".wandb.ai")


def describe_endpoint(url: str) -> str:
    """Whom a URL reaches, for error messages: W&B's service, or a custom base URL."""
    url = _strip(str(url))
    if url in (DEFAULT_INFERENCE_BASE_URL, DEFAULT_TRAINING_BASE_URL):
        return (
            f"W&B at {url} (the default: no base URL is set; for the local backend pass its "
            f"base_url, or set {ENV_BASE_URL})"
        )
    if is_wandb_url(url):
        return f"W&B at {url}"
    return f"the custom base URL {url} (is a server running there?)"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


class Settings(BaseModel):
    """Resolved connection settings. The key is a SecretStr: it never shows in reprs or logs."""

    model_config = ConfigDict(frozen=True)

    api_key: SecretStr | None = None
    entity: str | None = None
    project: str | None = None
    training_base_url: str = DEFAULT_TRAINING_BASE_URL
    inference_base_url: str = DEFAULT_INFERENCE_BASE_URL
    local: bool | None = None
    """The endpoints are a wandb-serverless local backend (True), W&B or a proxy to it (False),
    or unknown (None: a loopback URL counts as local for the project header, and the trainer
    asks the server's ``/v1/system-check``). ``WANDB_SERVERLESS_LOCAL=1|0`` sets it."""

    @classmethod
    def resolve(
        cls,
        *,
        api_key: str | SecretStr | None = None,
        entity: str | None = None,
        project: str | None = None,
        base_url: str | None = None,
        training_base_url: str | None = None,
        inference_base_url: str | None = None,
        local: bool | None = None,
    ) -> Settings:
        """Build settings from arguments, falling back to the environment, then defaults.

        ``base_url`` sets both endpoints at once (a local backend serves both).
        ``project`` may be ``"entity/project"``; the entity part then fills ``entity``.
        """
        key = api_key if api_key is not None else _env(ENV_API_KEY)
        if isinstance(key, str):
            key = SecretStr(key) if key else None
        project = project or _env(ENV_PROJECT)
        entity = entity or _env(ENV_ENTITY)
        if project and "/" in project:
            head, _, tail = project.partition("/")
            entity, project = entity or head, tail
        return cls(
            api_key=key,
            entity=entity,
            project=project,
            training_base_url=_endpoint(training_base_url, base_url, ENV_TRAINING_BASE_URL)
            or DEFAULT_TRAINING_BASE_URL,
            inference_base_url=_endpoint(inference_base_url, base_url, ENV_INFERENCE_BASE_URL)
            or DEFAULT_INFERENCE_BASE_URL,
            local=local if local is not None else _flag(_env(ENV_LOCAL)),
        )

    def require_api_key(self) -> str:
        """The key's value, for building auth headers only."""
        if self.api_key is None or not self.api_key.get_secret_value():
            raise MissingAPIKeyError()
        return self.api_key.get_secret_value()

    @property
    def project_path(self) -> str | None:
        """``entity/project`` when the entity is known, else the bare project (no look-up)."""
        if not self.project:
            return None
        return f"{self.entity}/{self.project}" if self.entity else self.project

    @property
    def openai_project(self) -> str | None:
        """The ``OpenAI-Project`` header W&B Inference reads: always ``entity/project`` (a bare
        project is a 401 there). Without an entity, the key's default entity is asked once;
        if that fails, :class:`MissingEntityError` is raised before anything is sent. A local
        backend (``local``, or any loopback URL) takes the bare project."""
        local = self.local if self.local is not None else _loopback(self.inference_base_url)
        if not self.project or self.entity or local:
            return self.project_path
        key = self.require_api_key()
        try:
            return f"{default_entity(key)}/{self.project}"
        except ImportError:
            why = f"the wandb SDK is not installed: {WANDB_EXTRA}"
            raise MissingEntityError(self.project, why) from None
        except Exception as exc:
            why = f"{type(exc).__name__}: {str(exc)[:200]}".replace(key, "***")
            raise MissingEntityError(self.project, why) from None


def _endpoint(own: str | None, shared: str | None, own_env: str) -> str | None:
    """An endpoint by the module's precedence; None when nothing sets it."""
    url = own or shared or _env(own_env) or _env(ENV_BASE_URL)
    return _strip(url) if url else None


def env_inference_url() -> str | None:
    """The chat endpoint the environment sets, by the module's precedence; None: W&B's.
    ``ChatWandb``'s default ``base_url`` (LangChain reads settings from the environment when
    the model is built)."""
    return _endpoint(None, None, ENV_INFERENCE_BASE_URL)


def _flag(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.lower() in ("1", "true", "yes")


def _loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def _strip(url: str) -> str:
    return url.rstrip("/")
