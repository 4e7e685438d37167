"""Bounded fuzzing of the server: schemathesis over its own OpenAPI (valid and invalid data),
and hypothesis over chat-completion parameters with hostile values. No 5xx, every error a JSON
body in the API's shape.

schemathesis' pytest plugin does not work with pytest 9.2 ('Function' object has no attribute
'_nodeid'), so its strategies are driven with hypothesis directly.
"""

from __future__ import annotations

import json
import math

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from support.vllm_errors import error_message

EXAMPLES = 12
CHAT_EXAMPLES = 60


INFERENCE = ("/v1/chat/", "/v1/models", "/tokenize", "/detokenize", "/health", "/version")


def _json_error_body(status: int, content_type: str | list[str], body: bytes, path: str) -> None:
    """An error is JSON in its API's shape: vLLM's on the inference routes, the seed's
    ``{"detail"}`` on the training API."""
    if status >= 400:
        if isinstance(content_type, list):  # schemathesis keeps every value of a header
            content_type = content_type[0] if content_type else ""
        assert content_type.startswith("application/json"), (status, body[:200])
        if path.startswith(INFERENCE) and not path.startswith("/v1/models/"):
            assert error_message(json.loads(body))
        else:
            assert "detail" in json.loads(body)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_has_no_server_errors_and_answers_json(backend, mode):
    # the schema comes from the app itself: /openapi.json is off unless `serve --docs`
    schema = schemathesis.openapi.from_dict(backend.app.openapi()).exclude(
        path_regex="chat/completions"
    )
    root = backend.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {backend.api_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    fuzzed = 0
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            response = case.call_and_validate(
                base_url=root, headers=headers, checks=[not_a_server_error]
            )
            _json_error_body(
                response.status_code,
                response.headers.get("content-type", ""),
                response.content,
                case.path,
            )

        try:
            check()
            fuzzed += 1
        except Unsatisfiable:  # no invalid input exists (e.g. GET /v1/health has no inputs)
            assert mode is GenerationMode.NEGATIVE

    assert fuzzed >= (12 if mode is GenerationMode.POSITIVE else 6)


HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 0.5, 2.5]),
    st.text(max_size=12),
    st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(-5, 10**7), max_size=2),
    st.lists(st.text(max_size=6), max_size=3),
)
PARAMETERS = [
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "logit_bias", "seed", "stop", "stop_token_ids", "min_tokens",
    "ignore_eos", "n", "logprobs", "top_logprobs", "return_token_ids", "tool_choice", "tools",
    "response_format", "structured_outputs", "chat_template_kwargs", "stream_options",
    "include_stop_str_in_output", "continue_final_message", "add_generation_prompt", "echo",
    "prompt_logprobs", "bad_words", "allowed_token_ids", "truncate_prompt_tokens",
    "return_tokens_as_token_ids",
]  # fmt: skip
MESSAGES = st.one_of(
    st.just([{"role": "user", "content": "Hi"}]),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.one_of(st.sampled_from(["user", "assistant", "tool", "x"]), HOSTILE)},
            optional={"content": HOSTILE, "tool_calls": HOSTILE, "tool_call_id": HOSTILE},
        ),
        max_size=3,
    ),
)


@pytest.mark.slow
def test_chat_completions_never_answer_5xx_to_hostile_parameters(backend):
    headers = {"Authorization": f"Bearer {backend.api_key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=backend.base_url, headers=headers, timeout=60) as client:

        @given(
            fields=st.dictionaries(st.sampled_from(PARAMETERS), HOSTILE, max_size=4),
            messages=MESSAGES,
        )
        @settings(
            max_examples=CHAT_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(fields, messages) -> None:
            # max_tokens stays small (decoding is not under test), n too
            body = {**fields, "messages": messages, "max_tokens": 3}
            if isinstance(body.get("n"), int) and not isinstance(body["n"], bool):
                body["n"] = max(1, min(body["n"], 2))
            response = client.post("/chat/completions", content=json.dumps(body))
            assert response.status_code < 500, (body, response.text[:300])
            _json_error_body(
                response.status_code,
                response.headers.get("content-type", ""),
                response.content,
                "/v1/chat/completions",
            )

        check()
