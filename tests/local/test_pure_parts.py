"""The local server's pure parts, without a server: the tool-call parser (whole and streamed),
the message preparation for templates without tools, and the incremental detokenizer."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.fixtures import MODEL_CACHE
from transformers import AutoTokenizer

from wandb_serverless.local.engine import Detokenizer
from wandb_serverless.local.loader import resolve
from wandb_serverless.local.tools import (
    ParsedCall,
    ToolStreamParser,
    UnsupportedContentError,
    format_tool_call,
    parse_tool_calls,
    prepare_messages,
)

NAMES = {"get_weather", "get_time"}
CALL = format_tool_call("get_weather", '{"city": "Paris"}')


def calls_of(calls: list[ParsedCall]) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        (f"Let me look.\n{CALL}", "Let me look.", [("get_weather", {"city": "Paris"})]),
        (CALL + format_tool_call("get_time", "{}"), None, [("get_weather", {"city": "Paris"}), ("get_time", {})]),
        # a name the request did not offer, or JSON that does not parse: text, never a call
        (format_tool_call("rm_rf", "{}"), format_tool_call("rm_rf", "{}"), []),
        ("<tool_call>{not json}</tool_call>", "<tool_call>{not json}</tool_call>", []),
        # a name that is not a string (the model wrote it once): text, not a 500
        ('<tool_call>{"name": {"city": "Oslo"}}</tool_call>', '<tool_call>{"name": {"city": "Oslo"}}</tool_call>', []),
        ('<tool_call>{"name": ["get_time"]}</tool_call>', '<tool_call>{"name": ["get_time"]}</tool_call>', []),
        ('<tool_call>{"name": "get_time", "parameters": {"tz": "UTC"}}</tool_call>', None, [("get_time", {"tz": "UTC"})]),
        ('{"name": "get_time", "arguments": {}}', None, [("get_time", {})]),  # bare object
        ("Just text.", "Just text.", []),
        (f"{CALL[:-5]}", None, [("get_weather", {"city": "Paris"})]),  # closing tag cut
    ],
)  # fmt: skip
def test_parse_tool_calls(text, content, calls):
    got_content, got_calls = parse_tool_calls(text, NAMES)
    assert got_content == content and calls_of(got_calls) == calls
    assert all(c.id.startswith("call_") for c in got_calls)


def test_a_forced_call_cut_off_keeps_its_name_and_partial_arguments():
    content, (call,) = parse_tool_calls('<tool_call>{"name": "get_weather", "arguments": {"ci', NAMES, cut_off=True)  # fmt: skip
    assert content is None and call.name == "get_weather" and call.arguments == '{"ci'
    _, (whole,) = parse_tool_calls(CALL[:-3], NAMES, cut_off=True)  # only the tag was cut
    assert json.loads(whole.arguments) == {"city": "Paris"}


TEXTS = [
    f"Checking.{CALL} and {format_tool_call('get_time', '{}')} done",
    f"<tool_ca is not a tag <tool_call> {CALL}",
    "no calls < at all <",
    f"{CALL}{CALL}",
    "<tool_call>{broken}</tool_call> after",
    f"Sure.{CALL[:-4]}",  # the length limit cut the closing tag
]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(TEXTS), st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_streaming_in_any_chunks_gives_what_parsing_the_whole_text_gives(text, cuts):
    """Markers split across chunks are held, never released as content, never lost."""
    points = sorted({min(c, len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    parser = ToolStreamParser(NAMES)
    out = [item for chunk in chunks for item in parser.feed(chunk)] + parser.finish()
    content = "".join(i for i in out if isinstance(i, str)).strip() or None
    calls = [i for i in out if isinstance(i, ParsedCall)]
    want_content, want_calls = parse_tool_calls(text, NAMES)
    assert calls_of(calls) == calls_of(want_calls)
    assert content == want_content or (content or "").split() == (want_content or "").split()


def test_a_forced_streamed_call_cut_off_is_still_a_call():
    parser = ToolStreamParser(NAMES, forced=True)
    assert parser.feed('<tool_call>{"name": "get_weather", "argu') == []
    (call,) = parser.finish()
    assert isinstance(call, ParsedCall) and call.name == "get_weather"


def test_prepare_messages_inlines_tools_and_turns_results_into_user_turns():
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    prepared = prepare_messages(
        [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        [tool],
    )  # fmt: skip
    assert [m["role"] for m in prepared] == ["system", "user", "assistant", "user"]
    assert (
        prepared[0]["content"].startswith("Be brief.\n\n# Tools")
        and '"get_weather"' in prepared[0]["content"]
    )
    assert prepared[2]["content"] == format_tool_call("get_weather", '{"city":"Paris"}')
    assert prepared[3]["content"] == "<tool_response>\nsunny\n</tool_response>"
    with pytest.raises(UnsupportedContentError, match="image_url"):
        prepare_messages(
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], None
        )


@pytest.fixture(scope="module")
def tokenizer():
    _, path = resolve(None, MODEL_CACHE)
    return AutoTokenizer.from_pretrained(path)


def release(tokenizer, text: str, stop: list[str], include_stop: bool = False):
    """Feed ``text``'s tokens one at a time: (released text, stop hit, what flush adds)."""
    detok = Detokenizer(tokenizer, stop, include_stop)
    released, hit = "", None
    for token in tokenizer.encode(text, add_special_tokens=False):
        out, hit = detok.add(token)
        released += out
        if hit:
            break
    return released, hit, detok.flush()


def test_detokenizer_releases_exactly_the_text(tokenizer):
    text = "Grüße aus Zürich: 21.5 °C, ☀️ und 東京."
    released, hit, rest = release(tokenizer, text, [])
    assert hit is None and released + rest == text
    assert "\ufffd" not in released  # a character split across tokens is held until whole


@pytest.mark.parametrize("include_stop", [False, True])
def test_detokenizer_stops_at_a_stop_string_split_across_tokens(tokenizer, include_stop):
    released, hit, _ = release(tokenizer, "The answer is 42.\nEND of it", ["\nEND"], include_stop)
    assert hit == "\nEND"
    assert released == ("The answer is 42.\nEND" if include_stop else "The answer is 42.")


def test_detokenizer_never_releases_the_start_of_a_stop_string_it_then_hits(tokenizer):
    detok = Detokenizer(tokenizer, ["STOP"], False)
    seen = ""
    for token in tokenizer.encode("abc STOP", add_special_tokens=False):
        out, hit = detok.add(token)
        seen += out
        if hit:
            break
    assert "S" not in seen and seen.strip() == "abc"


# -- the request planner ------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def planned(tokenizer, **body):
    from wandb_serverless.local.protocol import ChatCompletionRequest, plan

    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    )
    return plan(request, tokenizer, context_length=2048, default_max_tokens=64, vocab_size=49152)


def test_plan_maps_sampling_fields_and_defaults(tokenizer):
    default = planned(tokenizer)
    assert default.params.max_tokens == 64 and default.params.temperature == 1.0
    assert default.constraint is None and default.tool_mode == "none"
    assert tokenizer.decode(default.prompt_ids).rstrip().endswith("assistant")
    tuned = planned(
        tokenizer, temperature=0.2, top_p=0.9, top_k=5, max_completion_tokens=7, stop="END",
        logit_bias={"42": -100}, seed=3, logprobs=True, top_logprobs=2,
    )  # fmt: skip
    params = tuned.params
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == (0.2, 0.9, 5, 7)
    assert params.stop == ["END"] and params.logit_bias == {42: -100} and params.top_logprobs == 2


@pytest.mark.parametrize(
    ("body", "mode", "names", "constrained"),
    [
        ({"tools": [WEATHER, TIME]}, "auto", {"get_weather", "get_time"}, False),
        ({"tools": [WEATHER, TIME], "tool_choice": "none"}, "none", set(), False),
        ({"tools": [WEATHER, TIME], "tool_choice": "required"}, "forced", {"get_weather", "get_time"}, True),
        ({"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "forced", {"get_time"}, True),
        ({"response_format": {"type": "json_object"}}, "none", set(), True),
    ],
)  # fmt: skip
def test_plan_tool_modes_and_grammars(tokenizer, body, mode, names, constrained):
    result = planned(tokenizer, **body)
    assert result.tool_mode == mode and result.tool_names == names
    assert (result.constraint is not None) == constrained
    rendered = tokenizer.decode(result.prompt_ids)
    assert ("<tools>" in rendered) == (mode != "none")


def _as_vllm_guidance_serializes(kind: str, value) -> str:
    """What vLLM's ``guidance`` structured-output backend makes of ``StructuredOutputsParams(
    **{kind: value})`` (vllm/v1/structured_output/backend_guidance.py, the same llguidance
    calls: JSON through its schema converter, the rest through ``grammar_from``)."""
    from llguidance import LLMatcher, grammar_from

    if kind == "json":
        return LLMatcher.grammar_from_json_schema(json.dumps(value))
    if kind == "json_object":
        return LLMatcher.grammar_from_json_schema('{"type": "object"}')
    return grammar_from(kind, json.dumps(value) if kind == "choice" else value)


@pytest.mark.parametrize(
    "body",
    [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}},
        {"response_format": {"type": "json_object"}},
        {"structured_outputs": {"regex": "[0-9]{3}"}},
        {"structured_outputs": {"choice": ["yes", "no"]}},
        {"structured_outputs": {"grammar": 'root ::= "yes" | "no"'}},
        {"structured_outputs": {"grammar": 'start: "a" | "b"'}},
        {"tools": [WEATHER, TIME], "tool_choice": "required"},
    ],
)  # fmt: skip
def test_the_engines_constraint_is_a_spec_vllm_takes_as_it_is(tokenizer, body):
    """The engine interface carries the constraint as vLLM's StructuredOutputsParams fields, not
    a compiled grammar: a vLLM engine could pass it on unchanged (checked with the llguidance
    calls vLLM's guidance backend makes, against this model's vocabulary)."""
    import llguidance.hf
    from llguidance import LLMatcher

    constraint = planned(tokenizer, **body).constraint
    serialized = _as_vllm_guidance_serializes(constraint.kind, constraint.value)
    vocabulary = llguidance.hf.from_tokenizer(tokenizer, n_vocab=49152)
    assert LLMatcher.validate_grammar(serialized, vocabulary) == ""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tool_choice": "required"}, "no tools were given"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "not among the tools"),
        ({"tools": [{"type": "function", "function": {}}]}, "name is required"),
        ({"logprobs": False, "top_logprobs": 3}, "requires logprobs"),
        ({"logit_bias": {"abc": 1}}, "token ids"),
        ({"logit_bias": {"1": 500}}, "between -100 and 100"),
        ({"stop_token_ids": [10**9]}, "not a token id"),
        ({"max_tokens": 10**6}, "maximum context length is 2048"),
        ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a+"}}, "only one output constraint"),
        ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "forced tool call"),
        ({"chat_template_kwargs": {"chat_template": "{{ x }}"}}, "not allowed"),
        ({"structured_outputs": {"choice": "a"}}, "non-empty list"),
    ],
)  # fmt: skip
def test_plan_refuses_what_it_cannot_honour_with_a_reason(tokenizer, body, message):
    from wandb_serverless.local.protocol import BadRequest

    with pytest.raises(BadRequest, match=message):
        planned(tokenizer, **body)
