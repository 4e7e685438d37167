"""Every Python block in README.md runs as written against the local backend: W&B's model
names switch to it through configuration only (environment variables, as a user would set)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from support.fixtures import MODEL_CACHE, REPO

from wandb_serverless.local import LocalBackend

README = REPO / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
W_AND_B_NAMES = ["meta-llama/Llama-3.1-8B-Instruct", "OpenPipe/Qwen3-14B-Instruct"]


@pytest.fixture(scope="module")
def readme_env(tmp_path_factory):
    data = tmp_path_factory.mktemp("readme-backend")
    with LocalBackend.start(
        data_dir=data, model_cache_dir=MODEL_CACHE, served_model_names=W_AND_B_NAMES
    ) as backend:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "OPENAI_"))}
        env.update(
            WANDB_API_KEY=backend.api_key,
            WANDB_SERVERLESS_BASE_URL=backend.base_url,
            # the block that starts its own backend: its state in a scratch dir, the model cache
            # shared (a fresh one converts the GGUF file first, ~10 s)
            WANDB_SERVERLESS_DATA_DIR=str(tmp_path_factory.mktemp("own-backend")),
            WANDB_SERVERLESS_MODEL_CACHE=str(MODEL_CACHE),
        )
        yield env, tmp_path_factory.mktemp("readme-cwd")


def test_the_readme_has_the_blocks_this_test_runs():
    assert len(BLOCKS) >= 5  # a parsing slip must not make the test below pass on nothing


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_as_written(readme_env, index):
    """Blocks run in README order in one directory (the typed-client block trains on the
    rollouts the quickstart before it recorded), each in a fresh interpreter."""
    env, cwd = readme_env
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"README block {index + 1}:\n{BLOCKS[index]}\n{result.stderr[-3000:]}"
    )
