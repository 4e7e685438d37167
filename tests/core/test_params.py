"""The parameter table (``chat.params``) is the one list: the client's request building, the
adapters' fields, the local server's schema and the engine's parameters agree with it."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from wandb_serverless.chat import SamplingFields, build_request
from wandb_serverless.chat.params import BY_NAME, EXTRA_BODY, PARAMS, markdown_table
from wandb_serverless.local.engine_api import SamplingParams
from wandb_serverless.local.protocol import ChatCompletionRequest

USER = [{"role": "user", "content": "hi"}]


def test_every_parameter_travels_where_the_table_says():
    for param in PARAMS:
        if param.where == "removed":
            with pytest.raises(ValueError, match="removed from vLLM"):
                build_request(model="m", messages=USER, params={param.name: 1})
            continue
        request = build_request(model="m", messages=USER, params={param.name: 1})
        sent = "max_completion_tokens" if param.name == "max_tokens" else param.name
        if param.where == "extra_body":
            assert request["extra_body"] == {sent: 1}, param.name
        else:
            assert request[sent] == 1 and "extra_body" not in request, param.name


def test_the_adapters_sampling_fields_are_all_in_the_table():
    assert set(SamplingFields.model_fields) - set(BY_NAME) == set()


def test_the_local_schema_declares_what_the_table_serves():
    declared = set(ChatCompletionRequest.model_fields) - {"messages", "model"}
    served = {p.name for p in PARAMS if p.local == "yes"}
    assert served <= declared
    assert all(BY_NAME[name].local in ("yes", "no-op") for name in declared)


def test_engine_fields_match_the_table():
    engine = {f.name for f in dataclasses.fields(SamplingParams)}
    named = {p.engine for p in PARAMS if p.engine}
    assert named == engine


def test_docs_list_the_table(tmp_path):
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "parameters.md"
    assert markdown_table() in docs.read_text(), "paste chat.params.markdown_table() into it"


def test_a_rejected_parameter_is_a_400_and_a_no_op_one_is_served(backend):
    headers = {"Authorization": f"Bearer {backend.api_key}"}
    base = {"messages": USER, "max_tokens": 2}
    for param in PARAMS:
        if param.local == "rejected" and param.where == "extra_body":
            answer = httpx.post(
                backend.base_url + "/chat/completions",
                json={**base, param.name: "x"},
                headers=headers,
                timeout=60,
            )
            assert answer.status_code == 400, param.name
    no_ops = {p.name: "x" for p in PARAMS if p.local == "no-op" and p.name != "parallel_tool_calls"}
    answer = httpx.post(
        backend.base_url + "/chat/completions", json={**base, **no_ops}, headers=headers, timeout=60
    )
    assert answer.status_code == 200, answer.text
    assert EXTRA_BODY  # the table has vLLM extras to send
