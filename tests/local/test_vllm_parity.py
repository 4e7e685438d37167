"""The local backend answers as vLLM does (and so W&B Inference): the seed's extra parameters,
nested tool schemas under a forced call, stream fields where vLLM puts them, its probe routes.
Each test here is a protocol difference found by running vLLM's own server tests against it."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel, Field
from support.vllm_errors import error_message

USER = [{"role": "user", "content": "What is the capital of France?"}]
SAYING = "Here is a common saying about apple. An apple a day, keeps"


def post(backend, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {backend.api_key}"}
    return httpx.post(
        backend.base_url + "/chat/completions", json=body, headers=headers, timeout=120
    )


def stream_chunks(backend, body: dict) -> list[dict]:
    text = post(backend, {**body, "stream": True}).text
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"seed": 2**63}, ["seed", "less_than_equal"]),
        ({"logit_bias": {"bad1": 1, "bad2": 2}}, ["bad1", "bad2", "logit_bias"]),
        ({"logit_bias": {"²": 1}}, ["logit_bias", "'²'"]),  # a digit to isdigit(), not int()
        ({"logit_bias": {"49153": 1}}, ["49153", "49152"]),
        ({"logit_bias": {"1": "not a number"}}, ["logit_bias"]),
        ({"stop_token_ids": [49153]}, ["49153", "49152"]),
        ({"top_logprobs": 21, "logprobs": True}, ["top_logprobs", "max_logprobs"]),
        ({"prompt_logprobs": -1}, ["prompt_logprobs", "max_logprobs"]),
        ({"stream_options": {"include_usage": True}}, ["stream=True"]),
        ({"stream_options": {"include_usage": "sometimes"}}, ["stream_options"]),
        ({"allowed_token_ids": []}, ["allowed_token_ids"]),
        ({"allowed_token_ids": [0, 10**9]}, ["allowed_token_ids", "49152"]),
        ({"bad_words": [""]}, ["bad_words"]),
        ({"truncate_prompt_tokens": 9000}, ["truncate_prompt_tokens", "8192"]),
        ({"messages": [{"role": "r" * 5000, "content": "hi"}]}, ["role"]),
        ({"use_beam_search": True}, ["use_beam_search", "not supported"]),
    ],
)
def test_bad_parameters_are_400s_in_vllm_shape_that_name_the_fault(backend, oai, extra, names):
    response = post(backend, {"messages": USER, "max_tokens": 2, **extra})
    assert response.status_code == 400, response.text
    message = error_message(response.json())
    assert all(name in message for name in names), message
    assert oai.chat.completions.create(model="default", messages=USER, max_tokens=2).choices


def test_echo_puts_the_continued_message_before_the_completion(oai, backend):
    messages = [
        {"role": "user", "content": "tell me a common saying"},
        {"role": "assistant", "content": SAYING},
    ]
    extra = {"continue_final_message": True, "add_generation_prompt": False}
    args = dict(model="default", messages=messages, max_tokens=8, temperature=0)
    plain = oai.chat.completions.create(**args, extra_body=extra).choices[0].message.content
    echoed = oai.chat.completions.create(**args, extra_body={**extra, "echo": True})
    assert echoed.choices[0].message.content == SAYING + plain
    chunks = stream_chunks(backend, {**args, **extra, "echo": True})
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == SAYING + plain


def test_prompt_logprobs_score_the_prompt_as_the_model_scores_its_own_tokens(oai):
    """One call scores a conversation: a greedy completion, sent back as the final message,
    gets the same logprobs from prompt_logprobs as it had when it was sampled."""
    sampled = oai.chat.completions.create(
        model="default", messages=USER, max_tokens=6, temperature=0, logprobs=True,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    answer = sampled.choices[0].message.content
    scored = oai.chat.completions.create(
        model="default",
        messages=[*USER, {"role": "assistant", "content": answer}],
        max_tokens=1,
        extra_body={
            "prompt_logprobs": 2,
            "continue_final_message": True,
            "add_generation_prompt": False,
            "return_token_ids": True,
        },
    )
    prompt = scored.prompt_token_ids
    table = scored.prompt_logprobs
    assert table[0] is None and len(table) == len(prompt)
    for token, entry in zip(prompt[1:], table[1:], strict=True):
        assert str(token) in entry and 2 <= len(entry) <= 3
        assert {1, 2} <= {v["rank"] for v in entry.values()}
    tokens = sampled.choices[0].token_ids
    assert prompt[-len(tokens) :] == tokens, "the answer re-tokenizes as it was sampled"
    for i, item in enumerate(sampled.choices[0].logprobs.content):
        entry = table[len(prompt) - len(tokens) + i][str(tokens[i])]
        assert entry["logprob"] == pytest.approx(item.logprob, abs=2e-3)
        assert entry["rank"] == 1  # greedy: each was the top token
    plain = oai.chat.completions.create(model="default", messages=USER, max_tokens=1)
    for field in ("prompt_logprobs", "prompt_token_ids"):
        assert plain.model_extra[field] is None  # present, null, as vLLM
    assert plain.choices[0].model_extra["token_ids"] is None
    as_ids = oai.chat.completions.create(
        model="default",
        messages=USER,
        max_tokens=1,
        extra_body={"prompt_logprobs": 0, "return_tokens_as_token_ids": True},
    )
    for entry in as_ids.prompt_logprobs[1:]:
        ((token, value),) = entry.items()
        assert value["decoded_token"] == f"token_id:{token}"
    with pytest.raises(openai.BadRequestError, match="stream"):
        oai.chat.completions.create(
            model="default", messages=USER, stream=True, extra_body={"prompt_logprobs": 1}
        )


def test_prompt_logprobs_and_echo_on_long_prompts_leave_a_neighbour_unharmed(oai):
    """Scoring runs in chunks (never a prompt x vocabulary block of floats at once); a prompt
    that leaves no room near the context limit is a 400 before any work. (Scoring 7,500 tokens
    works too, at ~1.9x a plain prefill's time: too slow for the suite on 2 cores.)"""
    long = "lorem ipsum " * 400  # ~2,000 tokens
    reply = oai.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": long}],
        max_tokens=2,
        extra_body={"prompt_logprobs": 1},
    )
    assert len(reply.prompt_logprobs) == reply.usage.prompt_tokens > 1900
    assert all(-100 < next(iter(e.values()))["logprob"] <= 0 for e in reply.prompt_logprobs[1:])
    near = [
        {"role": "user", "content": "Repeat."},
        {"role": "assistant", "content": "lorem ipsum " * 1620},  # ~8,130 of 8,192 tokens
    ]
    extra = {"prompt_logprobs": 1, "echo": True, "continue_final_message": True}
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        oai.chat.completions.create(
            model="default",
            messages=near,
            max_tokens=100,
            extra_body={**extra, "add_generation_prompt": False},
        )
    neighbour = oai.chat.completions.create(
        model="default", messages=USER, max_tokens=4, temperature=0
    )
    assert neighbour.choices[0].message.content


def test_bad_words_and_allowed_token_ids_shape_what_is_sampled(oai, tokenizer):
    args = dict(model="default", messages=USER, max_tokens=12, temperature=0)
    first = oai.chat.completions.create(**args).choices[0].message.content
    assert "Paris" in first
    banned = oai.chat.completions.create(**args, extra_body={"bad_words": ["Paris"]})
    assert "Paris" not in banned.choices[0].message.content
    allowed = sorted(set(tokenizer(" yes no maybe", add_special_tokens=False).input_ids))
    limited = oai.chat.completions.create(
        **args, extra_body={"allowed_token_ids": allowed, "return_token_ids": True}
    )
    assert set(limited.choices[0].token_ids) <= set(allowed)


def test_truncate_prompt_tokens_keeps_the_prompts_end(oai):
    reply = oai.chat.completions.create(
        model="default",
        messages=USER,
        max_tokens=1,
        extra_body={"truncate_prompt_tokens": 10, "return_token_ids": True},
    )
    assert reply.usage.prompt_tokens == 10 == len(reply.prompt_token_ids)
    whole = oai.chat.completions.create(
        model="default", messages=USER, max_tokens=1, extra_body={"return_token_ids": True}
    )
    assert whole.prompt_token_ids[-10:] == reply.prompt_token_ids


def test_a_custom_role_goes_to_the_template_as_it_is(oai, tokenizer):
    ask = "what is 1+1?"
    replies = [
        oai.chat.completions.create(
            model="default",
            messages=[{"role": "my-custom-role", "content": content}],
            max_tokens=4,
            temperature=0,
            extra_body={"return_token_ids": True},
        )
        for content in (ask, [{"type": "text", "text": ask}])
    ]
    assert replies[0].choices[0].message.content == replies[1].choices[0].message.content
    assert "my-custom-role\nwhat is 1+1?" in tokenizer.decode(replies[0].prompt_token_ids)


class Address(BaseModel):
    street: str
    city: str


class Shipment(BaseModel):
    to: Address


class Item(BaseModel):
    name: str
    quantity: int


class Order(BaseModel):
    items: list[Item] = Field(max_length=2)


class Node(BaseModel):
    value: int
    children: list[Node] = []


@pytest.mark.parametrize("choice", ["required", "named"])
def test_a_forced_call_of_a_tool_with_nested_schemas(oai, choice):
    """pydantic's $defs / $ref (what openai.pydantic_function_tool sends) under a forced call:
    a 400 about an unresolvable pointer before; the same schema worked as a response_format."""
    tools = [openai.pydantic_function_tool(Order), openai.pydantic_function_tool(Shipment)]
    assert all("$defs" in t["function"]["parameters"] for t in tools)
    tool_choice = (
        "required"
        if choice == "required"
        else {"type": "function", "function": {"name": "Shipment"}}
    )
    reply = oai.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Send two apples to 1 Main Street, Paris."}],
        tools=tools,
        tool_choice=tool_choice,
        max_tokens=200,
        temperature=0,
    )
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content == ""  # vLLM: a forced call's content is "", not null
    call = message.tool_calls[0].function
    {"Order": Order, "Shipment": Shipment}[call.name].model_validate_json(call.arguments)
    if choice == "named":
        assert call.name == "Shipment"


@pytest.mark.parametrize("model", [Node, Shipment])
def test_a_forced_call_grammar_resolves_each_tools_own_definitions(tokenizer, model):
    """Recursive (``Node``) and nested (``Shipment``) schemas beside another tool: every
    ``$ref`` resolves once the call's grammar is built (before: "Pointer '/$defs/Node' does not
    exist")."""
    from wandb_serverless.local.grammar import Constraint, Vocabulary, tool_call_lark

    tools = [openai.pydantic_function_tool(model), openai.pydantic_function_tool(Order)]
    constraint = Constraint(Vocabulary(tokenizer, 49152), _compiled(tool_call_lark(tools)))
    assert not constraint.done


def _compiled(lark: str) -> str:
    from wandb_serverless.local.engine_api import OutputConstraint
    from wandb_serverless.local.grammar import compile_constraint

    return compile_constraint(OutputConstraint("grammar", lark))


def test_stream_fields_are_where_vllm_puts_them(backend):
    body = {"model": "default", "messages": USER, "max_tokens": 5, "temperature": 0}
    chunks = stream_chunks(
        backend,
        {
            **body,
            "return_token_ids": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        },
    )
    assert isinstance(chunks[0]["prompt_token_ids"], list)
    assert all("prompt_token_ids" not in c for c in chunks[1:])
    assert all("prompt_token_ids" not in c["choices"][0] for c in chunks if c["choices"])
    with_choices = [c for c in chunks if c["choices"]]
    finished = [c for c in with_choices if c["choices"][0]["finish_reason"]]
    assert finished == with_choices[-1:]  # once, on the last content chunk, which has text
    assert finished[0]["choices"][0]["finish_reason"] == "length"
    assert finished[0]["choices"][0]["delta"]["content"]
    counts = [c["usage"]["completion_tokens"] for c in with_choices]
    assert counts == sorted(counts) and counts[-1] == 5 == chunks[-1]["usage"]["completion_tokens"]
    stopped = stream_chunks(backend, {**body, "max_tokens": 40})  # ends on the EOS token
    assert stopped[-1]["choices"][0]["finish_reason"] == "stop"
    assert stopped[-1]["choices"][0]["delta"] == {"content": ""}  # a string, never null
    whole = post(backend, body).json()
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in with_choices)
        == whole["choices"][0]["message"]["content"]
    )


def test_forced_call_cut_by_the_length_limit_has_no_calls(oai):
    tools = [openai.pydantic_function_tool(Order)]
    reply = oai.chat.completions.create(
        model="default", messages=USER, tools=tools, tool_choice="required", max_tokens=1
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.tool_calls is None


def test_vllm_probe_routes_answer_without_a_key(backend):
    root = backend.base_url.removesuffix("/v1")
    health = httpx.get(root + "/health")
    assert health.status_code == 200 and health.content == b""
    from wandb_serverless.version import __version__

    assert httpx.get(root + "/version").json() == {"version": __version__}
