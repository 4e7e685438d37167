"""Every chat request parameter, once: where it travels in the request, what the local backend
does with it, and the engine field it becomes.

The client sends ``body`` parameters as top-level fields (the openai SDK's keyword arguments)
and ``extra_body`` ones (vLLM's extras) inside ``extra_body``; ``removed`` ones are refused on
the client (vLLM dropped them and ignores them silently). On the local backend, ``yes`` is
served, ``no-op`` is accepted and has no effect there (the reason says why), ``rejected`` is a
400 unless it is left at its default. ``engine`` names the ``SamplingParams`` field the value
becomes (``local/engine.py``); ``None`` means it shapes the prompt or the response instead.

To add a parameter: a row here, a typed field on ``SamplingFields`` (``chat/protocol.py``) if
adapters should declare it, and for the local backend a field on ``ChatCompletionRequest``
(``local/protocol.py``) and its use in ``plan()``. ``tests/core/test_params.py`` checks the
three agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Where = Literal["body", "extra_body", "removed"]
Local = Literal["yes", "no-op", "rejected"]


@dataclass(frozen=True)
class Param:
    name: str
    where: Where
    local: Local
    engine: str | None = None
    note: str = ""


_REMOVED = (
    "removed from vLLM (>= 0.12), which ignores it: use response_format or structured_outputs"
)

PARAMS: tuple[Param, ...] = (
    # -- OpenAI's -------------------------------------------------------------------------------
    Param("temperature", "body", "yes", "temperature"),
    Param("top_p", "body", "yes", "top_p"),
    Param("seed", "body", "yes", "seed", "choice i of n samples with seed + i"),
    Param("n", "body", "yes", None, "n engine sequences, one response"),
    Param("presence_penalty", "body", "yes", "presence_penalty"),
    Param("frequency_penalty", "body", "yes", "frequency_penalty"),
    Param("logit_bias", "body", "yes", "logit_bias"),
    Param("logprobs", "body", "yes", None, "per-token logprobs in the response"),
    Param("top_logprobs", "body", "yes", "top_logprobs"),
    Param("stop", "body", "yes", "stop"),
    Param("max_completion_tokens", "body", "yes", "max_tokens"),
    Param("max_tokens", "body", "yes", "max_tokens", "sent as max_completion_tokens"),
    Param("tools", "body", "yes", None, "rendered by the chat template; parsed back"),
    Param("tool_choice", "body", "yes", None, "required / named: a grammar forces the call"),
    Param("parallel_tool_calls", "body", "no-op", None, "every call the model writes is returned"),
    Param("response_format", "body", "yes", None, "json_schema / json_object: a grammar"),
    Param("stream", "body", "yes"),
    Param("stream_options", "body", "yes", None, "include_usage"),
    Param("reasoning_effort", "body", "no-op", None, "the local models do not reason"),
    Param("user", "body", "no-op", None, "an end-user id for W&B's abuse monitoring"),
    Param("metadata", "body", "no-op", None, "stored completions: not kept locally"),
    Param("service_tier", "body", "no-op", None, "one tier locally"),
    # -- vLLM's extras --------------------------------------------------------------------------
    Param("top_k", "extra_body", "yes", "top_k"),
    Param("min_p", "extra_body", "yes", "min_p"),
    Param("repetition_penalty", "extra_body", "yes", "repetition_penalty"),
    Param("min_tokens", "extra_body", "yes", "min_tokens"),
    Param("stop_token_ids", "extra_body", "yes", "stop_token_ids"),
    Param("include_stop_str_in_output", "extra_body", "yes", "include_stop_str_in_output"),
    Param("ignore_eos", "extra_body", "yes", "ignore_eos"),
    Param("return_token_ids", "extra_body", "yes", None, "prompt_token_ids and token_ids"),
    Param("return_tokens_as_token_ids", "extra_body", "yes", None, "logprob tokens as ids"),
    Param("add_generation_prompt", "extra_body", "yes", None, "chat template argument"),
    Param("continue_final_message", "extra_body", "yes", None, "chat template argument"),
    Param("chat_template_kwargs", "extra_body", "yes", None, "template variables only"),
    Param("structured_outputs", "extra_body", "yes", None, "json, regex, choice, grammar"),
    Param("skip_special_tokens", "extra_body", "no-op", None, "special tokens are always skipped"),
    Param("spaces_between_special_tokens", "extra_body", "no-op", None, "as skip_special_tokens"),
    Param("cache_salt", "extra_body", "no-op", None, "one user: the prefix cache is not shared"),
    Param("priority", "extra_body", "no-op", None, "first come, first served"),
    Param("include_reasoning", "extra_body", "no-op", None, "the local models do not reason"),
    Param("truncate_prompt_tokens", "extra_body", "yes", None, "keeps the prompt's last k tokens"),
    Param("echo", "extra_body", "yes", None, "the final assistant message, then the completion"),
    Param("prompt_logprobs", "extra_body", "yes", "prompt_logprobs", "per prompt token, top k"),
    Param("bad_words", "extra_body", "yes", "bad_words", "never ends a word sequence"),
    Param("allowed_token_ids", "extra_body", "yes", "allowed_token_ids"),
    Param("use_beam_search", "extra_body", "rejected"),
    Param("logits_processors", "extra_body", "rejected"),
    Param("documents", "extra_body", "rejected"),
    Param("chat_template", "extra_body", "rejected", None, "the server renders its own template"),
    # -- gone ----------------------------------------------------------------------------------
    Param("guided_json", "removed", "rejected", None, _REMOVED),
    Param("guided_regex", "removed", "rejected", None, _REMOVED),
    Param("guided_choice", "removed", "rejected", None, _REMOVED),
    Param("guided_grammar", "removed", "rejected", None, _REMOVED),
)

BY_NAME = {p.name: p for p in PARAMS}
#: Sent inside ``extra_body`` (the openai SDK rejects unknown keyword arguments).
EXTRA_BODY = frozenset(p.name for p in PARAMS if p.where == "extra_body")
#: Refused by the client: silently ignored by current vLLM.
REMOVED = frozenset(p.name for p in PARAMS if p.where == "removed")
#: A 400 on the local backend when set to anything but their default.
LOCAL_REJECTED = tuple(p.name for p in PARAMS if p.local == "rejected")


def markdown_table() -> str:
    """The table as Markdown: docs/parameters.md holds it (a test compares them)."""
    rows = [
        "| parameter | sent in | local backend | engine field | note |",
        "|---|---|---|---|---|",
    ]
    rows += [
        f"| `{p.name}` | {p.where} | {p.local} | {p.engine or ''} | {p.note} |" for p in PARAMS
    ]
    return "\n".join(rows) + "\n"
