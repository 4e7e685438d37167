"""Every error path returns the documented shape."""

from __future__ import annotations

import httpx
import openai
import pytest
from support.vllm_errors import error_message

HELLO = [{"role": "user", "content": "Hello"}]


def post(backend, body, key=None):
    headers = {"Authorization": f"Bearer {key or backend.api_key}"}
    return httpx.post(
        backend.base_url + "/chat/completions", json=body, headers=headers, timeout=60
    )


def test_missing_or_wrong_key_is_401_in_vllm_shape(backend):
    assert (
        httpx.post(backend.base_url + "/chat/completions", json={"messages": HELLO}).status_code
        == 401
    )
    response = post(backend, {"messages": HELLO}, key="wrong")
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "message": "Authentication failed",
            "type": "AuthenticationError",
            "param": None,
            "code": 401,
        }
    }
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=backend.base_url, api_key="wrong").models.list()


def test_open_endpoints_need_no_key(backend):
    assert httpx.get(backend.base_url + "/health").json()["status"] == "ok"
    check = httpx.get(backend.base_url + "/system-check")
    assert (
        check.status_code == 200
        and check.json()["api"] is True
        and check.json()["cpu_queue"]["success"]
    )
    assert httpx.get(backend.base_url + "/preview/base-models").json() == [backend.model_id]
    assert httpx.get(backend.base_url + "/models").status_code == 401


def test_unknown_model_is_404(oai):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        oai.chat.completions.create(model="nope/unknown", messages=HELLO, max_tokens=2)


def test_malformed_body_is_a_400_that_names_each_field_as_vllm(backend, oai):
    """vLLM (and so W&B) answers a body that fails validation with 400, not FastAPI's 422: the
    openai SDK raises BadRequestError for it here as there."""
    response = post(backend, {"messages": [], "temperature": 9})
    assert response.status_code == 400
    message = error_message(response.json())
    assert "messages:" in message and "temperature:" in message
    assert "[type=less_than_equal]" in message and response.json()["error"]["param"] == "messages"
    assert post(backend, {"messages": [{"content": "no role"}]}).status_code == 400
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        oai.chat.completions.create(
            model="default", messages=HELLO, logprobs=True, top_logprobs=21, max_tokens=1
        )


def test_prompt_longer_than_context_is_400_with_numbers(backend):
    response = post(backend, {"messages": [{"role": "user", "content": "word " * 9000}]})
    assert response.status_code == 400
    detail = error_message(response.json())
    assert "maximum context length is 8192 tokens" in detail and "9" in detail


@pytest.mark.parametrize(
    "body",
    [
        {"guided_json": {"type": "object"}},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            },
            "structured_outputs": {"regex": "a+"},
        },
        {
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                }
            ]
        },
        {"structured_outputs": {"grammar": "start: ("}},
        {"top_logprobs": 3},
    ],
)
def test_unsupported_combinations_are_400_not_ignored(backend, body):
    response = post(backend, {"messages": HELLO, "max_tokens": 2, **body})
    assert response.status_code == 400, response.text
    assert error_message(response.json())
