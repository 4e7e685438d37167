"""Tool calling and structured outputs by constrained decoding."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_web",
        "description": "Search the web",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


class Person(BaseModel):
    name: str
    age: int


def test_named_tool_choice_forces_that_tool_with_valid_typed_args(oai):
    reply = oai.chat.completions.create(
        model="default",
        messages=ASK,
        tools=[WEATHER, SEARCH],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    args = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert (
        set(args) == {"city", "unit"}
        and isinstance(args["city"], str)
        and args["unit"] in ("celsius", "fahrenheit")
    )


def test_required_tool_choice_always_calls_one_of_the_tools(oai):
    for seed in range(3):
        reply = oai.chat.completions.create(
            model="default",
            messages=ASK,
            tools=[WEATHER, SEARCH],
            tool_choice="required",
            max_tokens=60,
            seed=seed,
        )
        (call,) = reply.choices[0].message.tool_calls
        assert call.function.name in ("get_weather", "search_web")
        json.loads(call.function.arguments)


def test_tool_choice_none_never_calls(oai):
    reply = oai.chat.completions.create(
        model="default", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=20
    )
    assert not reply.choices[0].message.tool_calls and reply.choices[0].finish_reason in (
        "stop",
        "length",
    )


def test_unicode_arguments_stay_raw(oai):
    echo = {
        "type": "function",
        "function": {
            "name": "echo",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string", "enum": ["你好", "こんにちは"]}},
                "required": ["text"],
            },
        },
    }
    reply = oai.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Say 你好"}],
        tools=[echo],
        tool_choice="required",
        max_tokens=30,
    )
    raw = reply.choices[0].message.tool_calls[0].function.arguments
    assert "\\u" not in raw and json.loads(raw)["text"] in ("你好", "こんにちは")


def test_streamed_tool_calls_arrive_as_openai_deltas(oai):
    stream = oai.chat.completions.create(
        model="default",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=60,
        stream=True,
    )
    deltas = [
        tc for chunk in stream if chunk.choices for tc in (chunk.choices[0].delta.tool_calls or [])
    ]
    assert deltas[0].id and deltas[0].function.name == "get_weather" and deltas[0].index == 0
    assert all(d.index == 0 and d.id is None for d in deltas[1:]) and len(deltas) > 2
    args = json.loads("".join(d.function.arguments or "" for d in deltas))
    assert set(args) == {"city", "unit"}


def test_call_ids_are_unique(oai):
    ids = {
        oai.chat.completions.create(
            model="default", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=60
        )
        .choices[0]
        .message.tool_calls[0]
        .id
        for _ in range(2)
    }
    assert len(ids) == 2


def test_auto_tool_choice_parses_calls_the_model_writes(oai):
    history = [
        {"role": "user", "content": "What's the weather in Rome?"},
        {
            "role": "assistant",
            "content": '<tool_call>{"name":"get_weather","arguments":{"city":"Rome","unit":"celsius"}}</tool_call>',
        },
    ]
    # continue_final_message makes the model's turn end exactly as written: the server must parse it
    reply = oai.chat.completions.create(
        model="default",
        messages=history,
        tools=[WEATHER],
        max_tokens=4,
        temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_json_schema_output_validates_whenever_it_finishes(oai):
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": Person.model_json_schema(), "strict": True},
    }
    ask = [{"role": "user", "content": "Invent a person."}]
    greedy = oai.chat.completions.create(
        model="default", messages=ask, response_format=fmt, max_tokens=60, temperature=0
    )
    assert greedy.choices[0].finish_reason == "stop"
    Person.model_validate_json(greedy.choices[0].message.content)
    sampled = oai.chat.completions.create(
        model="default", messages=ask, response_format=fmt, max_tokens=60, n=4, seed=1
    )
    for choice in sampled.choices:  # a sampled string may run past max_tokens: then it says so
        if choice.finish_reason == "stop":
            Person.model_validate_json(choice.message.content)
        else:
            assert choice.finish_reason == "length" and choice.message.content.startswith(
                '{"name":'
            )


def test_json_object_output_parses(oai):
    reply = oai.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        response_format={"type": "json_object"},
        max_tokens=80,
        temperature=0,
    )
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:
        assert reply.choices[0].message.content.startswith("{")


@pytest.mark.parametrize(
    ("constraint", "check"),
    [
        ({"choice": ["positive", "negative"]}, lambda text: text in ("positive", "negative")),
        ({"regex": r"[0-9]{3}-[0-9]{4}"}, lambda text: len(text) == 8 and text[3] == "-"),
        ({"json": Person.model_json_schema()}, lambda text: Person.model_validate_json(text)),
        ({"grammar": 'root ::= "yes" | "no"'}, lambda text: text in ("yes", "no")),
    ],
)
def test_vllm_structured_outputs(oai, constraint, check):
    # Greedy: at the default temperature 1.0 SmolLM2 runs a JSON integer or string past
    # max_tokens about one time in five (measured), a cut that is right but not what this tests.
    reply = oai.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Answer."}],
        max_tokens=40,
        temperature=0,
        extra_body={"structured_outputs": constraint},
    )
    assert check(reply.choices[0].message.content)
