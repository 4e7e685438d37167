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


@pytest.fixture
def traced() -> Iterator[tuple]:
    """(server, client): the real weave client on the in-process trace server, set as the
    global client (as ``weave.init`` does) for the test."""
    from weave.trace.context import weave_client_context

    from support.weave_fake import FakeTraceServer, weave_client

    server = FakeTraceServer()
    yield server, weave_client(server)
    weave_client_context.set_weave_client_global(None)


def sampled_rollouts(
    oai: openai.OpenAI, n: int, *, group: str = "colors", store=None, weave=None
) -> None:
    """``n`` rollouts of one prompt sampled by the local model with their exact tokens (as a
    recording adapter gets them), rewarded 0, 1, 0, ...: one group with a signal."""
    from wandb_serverless.rollouts import LLMCall, rollout
    from wandb_serverless.rollouts.recorder import make_choice

    prompt = [{"role": "user", "content": "Name a color."}]
    reply = oai.chat.completions.create(
        model="default",
        messages=prompt,
        n=n,
        max_tokens=8,
        logprobs=True,
        extra_body={"return_token_ids": True},
    )
    for i, choice in enumerate(reply.choices):
        data = choice.model_dump(mode="json")
        with rollout(group=group, store=store, weave=weave) as run:
            run.add_call(
                LLMCall(
                    prompt,
                    None,
                    make_choice(
                        data["message"],
                        finish_reason=data["finish_reason"],
                        logprobs=data["logprobs"],
                        token_ids=data["token_ids"],
                        prompt_token_ids=reply.model_extra["prompt_token_ids"],
                    ),
                )
            )
            run.reward = float(i % 2)
