"""Running the local backend: ``LocalBackend.start()`` for tests and examples, ``serve`` for the CLI."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from wandb_serverless.config import Settings
from wandb_serverless.local.guard import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger(__name__)
ENV_DATA_DIR = "WANDB_SERVERLESS_DATA_DIR"
ENV_MODEL_CACHE = "WANDB_SERVERLESS_MODEL_CACHE"
#: Comma-separated extra names the served model answers to (vLLM's --served-model-name), e.g.
#: a W&B model id, so code written for W&B runs here with configuration only.
ENV_SERVED_MODEL_NAMES = "WANDB_SERVERLESS_SERVED_MODEL_NAMES"


def default_data_dir() -> Path:
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "wandb-serverless"


def build_app(
    *,
    model: str | None,
    api_key: str,
    data_dir: Path,
    model_cache_dir: Path | None = None,
    max_batch_size: int = 16,
    max_queue: int = 256,
    default_max_tokens: int = 512,
    entity: str = "local",
    docs: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    sft_data_dir: Path | None = None,
    served_model_names: list[str] | None = None,
    max_loaded_adapters: int = 8,
    max_live_models: int = 2,
    max_logprobs: int = 20,
) -> Any:
    """Load the model, start its engine, and return the FastAPI app serving them.

    ``sft_data_dir``: the one directory outside the artifact store that SFT jobs may read
    ``file://`` datasets from (none by default). ``docs``: serve /docs and /openapi.json.
    ``served_model_names``: more names for the model (default: ``$WANDB_SERVERLESS_SERVED_MODEL_NAMES``),
    for chat and as a trainable base model. Memory stays bounded however many checkpoints are
    served and models trained: at most ``max_loaded_adapters`` LoRA adapters are loaded for
    serving (the least recently used is unloaded), and the trainer keeps the policy and
    optimizer of at most ``max_live_models`` models in memory (the others' are on disk).
    ``max_logprobs``: the most ``top_logprobs`` / ``prompt_logprobs`` a request may ask, -1 for
    the whole vocabulary (vLLM's ``--max-logprobs``).
    """
    from wandb_serverless.local import loader
    from wandb_serverless.local.app import Backend, create_app
    from wandb_serverless.local.engine import Engine
    from wandb_serverless.local.state import State
    from wandb_serverless.local.trainer import TrainingWorker

    data_dir.mkdir(parents=True, exist_ok=True)
    cache = model_cache_dir or Path(os.environ.get(ENV_MODEL_CACHE) or data_dir / "models")
    loaded = loader.load(model, Path(cache))
    engine = Engine(
        loaded.model,
        loaded.tokenizer,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        max_loaded_adapters=max_loaded_adapters,
    )
    state = State(data_dir)
    worker = TrainingWorker(
        state,
        loaded.path,
        loaded.tokenizer,
        sft_data_dir=sft_data_dir,
        max_live_models=max_live_models,
    )
    backend = Backend(
        loaded,
        engine,
        api_key,
        state,
        worker,
        default_max_tokens=default_max_tokens,
        default_entity=entity,
        aliases=tuple(served_model_names if served_model_names is not None else _env_names()),
        max_logprobs=max_logprobs,
    )
    return create_app(backend, docs=docs, max_body_bytes=max_body_bytes)


def _env_names() -> list[str]:
    return [n.strip() for n in os.environ.get(ENV_SERVED_MODEL_NAMES, "").split(",") if n.strip()]


class LocalBackend:
    """The local W&B-compatible server on a loopback port, in a background thread.

    >>> with LocalBackend.start() as backend:
    ...     client = openai.OpenAI(base_url=backend.base_url, api_key=backend.api_key)
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        api_key: str | None = None,
        data_dir: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **options: Any,
    ) -> None:
        self._api_key = SecretStr(api_key or f"local-{secrets.token_urlsafe(24)}")
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.host = host
        self.model = model
        self._port = port
        self._options = options
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.app: Any = None

    @classmethod
    @contextlib.contextmanager
    def start(cls, **kwargs: Any) -> Iterator[LocalBackend]:
        backend = cls(**kwargs)
        backend.run_in_background()
        try:
            yield backend
        finally:
            backend.stop()

    @property
    def api_key(self) -> str:
        return self._api_key.get_secret_value()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self._port}/v1"

    @property
    def model_id(self) -> str:
        return self.app.state.backend.model_id

    def settings(self) -> Settings:
        """Settings that point every endpoint at this server."""
        return Settings.resolve(api_key=self._api_key, base_url=self.base_url, local=True)

    def client(self, **kwargs: Any) -> Any:
        from wandb_serverless.api import Client

        return Client(settings=self.settings(), **kwargs)

    def run_in_background(self, timeout: float = 300.0) -> None:
        import uvicorn

        self.app = build_app(
            model=self.model, api_key=self.api_key, data_dir=self.data_dir, **self._options
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", timeout_keep_alive=30
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name="local-backend"
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local backend did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.app is not None:
            backend = self.app.state.backend
            backend.worker.close()
            backend.engine.close()
            backend.state.close()

    def __repr__(self) -> str:
        return f"LocalBackend(base_url={self.base_url!r}, model={self.model!r})"
