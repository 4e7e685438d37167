"""Session fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from support.fault_server import FaultServer
from wandb_serverless.local import LocalBackend


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


REPO = Path(__file__).resolve().parents[2]
MODEL_CACHE = REPO / ".cache" / "models"  # converted once, reused across runs (gitignored)


@pytest.fixture(scope="session")
def backend(tmp_path_factory) -> Iterator[LocalBackend]:
    """The local backend serving the real SmolLM2 model, shared by the whole session."""
    with LocalBackend.start(
        data_dir=tmp_path_factory.mktemp("backend"), model_cache_dir=MODEL_CACHE
    ) as running:
        yield running


@pytest.fixture(scope="session")
def oai(backend) -> openai.OpenAI:
    return openai.OpenAI(base_url=backend.base_url, api_key=backend.api_key, max_retries=0)


@pytest.fixture(scope="session")
def tokenizer(backend):
    return backend.app.state.backend.loaded.tokenizer
