"""vLLM's /tokenize and /detokenize on the local backend: same shapes, same key, 4xx on bad input."""

from __future__ import annotations

import httpx
import pytest
from support.vllm_errors import error_message


@pytest.fixture
def http(backend):
    root = backend.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {backend.api_key}"}
    with httpx.Client(base_url=root, headers=headers, timeout=30) as client:
        yield client


def test_tokenize_and_detokenize_round_trip(http, tokenizer):
    answer = http.post("/tokenize", json={"model": "default", "prompt": "Hello, world"}).json()
    assert answer["tokens"] == tokenizer("Hello, world").input_ids
    assert answer["count"] == len(answer["tokens"]) and answer["max_model_len"] > 0
    assert answer["token_strs"] is None
    back = http.post("/detokenize", json={"model": "default", "tokens": answer["tokens"]})
    assert back.json() == {"prompt": "Hello, world"}


def test_messages_count_is_the_chat_prompt(http, oai):
    messages = [{"role": "user", "content": "Name a fruit."}]
    counted = http.post("/tokenize", json={"messages": messages}).json()["count"]
    usage = oai.chat.completions.create(model="default", messages=messages, max_tokens=1).usage
    assert counted == usage.prompt_tokens


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 400),
        ("/tokenize", {}, 400),
        ("/tokenize", {"prompt": "a", "model": "gpt-4o"}, 404),
        ("/tokenize", {"prompt": "a", "unknown_field": 1}, 400),
        ("/tokenize", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400),
        ("/tokenize", {"messages": [{"role": ["user"], "content": "b"}]}, 400),  # fuzz found
        ("/tokenize", {"messages": [{"content": "no role"}]}, 400),
        ("/detokenize", {"tokens": [-1]}, 400),
        ("/detokenize", {"tokens": [10**12]}, 400),
        ("/detokenize", {"tokens": "abc"}, 400),
    ],
)
def test_bad_input_is_a_4xx_in_vllm_shape(http, path, body, status):
    response = http.post(path, json=body)
    assert response.status_code == status and error_message(response.json())


def test_the_key_is_required(backend):
    root = backend.base_url.removesuffix("/v1")
    assert httpx.post(f"{root}/tokenize", json={"prompt": "a"}).status_code == 401
