"""Chat requests, once, for every adapter: the sampling fields adapters declare, the request
(standard OpenAI fields plus vLLM extras, placed by ``chat.params``), tool choice and
structured-output forms, and the checks on a finished turn. Pure: no I/O, no recording."""

from __future__ import annotations

import json
from typing import Any

import openai
from pydantic import BaseModel, Field

from wandb_serverless.chat.params import EXTRA_BODY, REMOVED


class SamplingFields(BaseModel):
    """Sampling fields both adapters declare (OpenAI's and vLLM's), as typed model fields.

    ``ChatWandb`` and ``WandbLLM`` inherit them; ``sampling_params()`` is what they send.
    """

    top_p: float | None = None
    seed: int | None = Field(default=None, description="Same seed + same request = same output.")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = Field(default=None, description="Return the tokens' logprobs.")
    top_logprobs: int | None = None
    reasoning_effort: str | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    return_token_ids: bool | None = Field(
        default=None, description="Return prompt_token_ids and token_ids (vLLM)."
    )
    chat_template_kwargs: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    cache_salt: str | None = None
    priority: int | None = None

    def sampling_params(self) -> dict[str, Any]:
        """The set fields, by their request names (``build_request`` sorts out where they go)."""
        return {name: getattr(self, name) for name in SamplingFields.model_fields}


def tool_choice_to_openai(choice: Any, tool_names: list[str]) -> str | dict[str, Any] | None:
    """Map every tool_choice form frameworks pass to the OpenAI one.

    "any"/"required"/True force a call (the named form when there is exactly one tool, which
    more servers honour); a tool's name forces that tool; "auto"/"none" and dicts pass through.
    """
    if choice is None or choice is False:
        return None
    if choice in ("any", "required", True):
        if len(tool_names) == 1:
            return {"type": "function", "function": {"name": tool_names[0]}}
        return "required"
    if choice in ("auto", "none"):
        return choice
    if isinstance(choice, str):
        if tool_names and choice not in tool_names:
            raise ValueError(f"tool_choice {choice!r} is not one of the bound tools {tool_names}")
        return {"type": "function", "function": {"name": choice}}
    if isinstance(choice, dict):
        if "function" in choice or choice.get("type") in ("auto", "none", "required"):
            return choice if "function" in choice else choice["type"]
        if "name" in choice:  # {"type": "tool", "name": ...} (Anthropic style)
            return {"type": "function", "function": {"name": choice["name"]}}
    raise ValueError(f"unsupported tool_choice {choice!r}")


def json_schema_format(
    schema: dict[str, Any], *, name: str | None = None, strict: bool | None = None
) -> dict[str, Any]:
    """``response_format`` for a JSON schema (constrained on the server)."""
    spec: dict[str, Any] = {"name": name or schema.get("title") or "output", "schema": schema}
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


class LengthLimitError(openai.LengthFinishReasonError):
    """Structured output (a ``json_schema`` or ``json_object`` response format, or vLLM's
    ``structured_outputs``) that the length limit cut off: it is incomplete JSON, so this is
    raised instead of a parse error about missing fields. ``except
    openai.LengthFinishReasonError`` catches it, as for ``ChatOpenAI``."""

    def __init__(self, request: dict[str, Any], completion_tokens: int | None = None) -> None:
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        used = f", {completion_tokens} tokens written" if completion_tokens else ""
        cap = f"max_tokens={limit}" if limit else "the server's default max_tokens"
        openai.OpenAIError.__init__(
            self,
            f"the structured output was cut off by the length limit (finish_reason: length, "
            f"{cap}{used}), so it is incomplete JSON; raise max_tokens",
        )
        self.completion = None  # type: ignore[assignment]
        self.max_tokens = limit


def is_structured(request: dict[str, Any]) -> bool:
    """Does the request constrain the output to JSON (so a cut-off reply cannot parse)?"""
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
        return True
    return bool((request.get("extra_body") or {}).get("structured_outputs"))


def check_finish(
    request: dict[str, Any], finish_reason: str | None, completion_tokens: int | None = None
) -> None:
    """Raise ``LengthLimitError`` for structured output the length limit cut off."""
    if finish_reason == "length" and is_structured(request):
        raise LengthLimitError(request, completion_tokens)


def build_request(
    *,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    stream: bool = False,
    stream_usage: bool = True,
) -> dict[str, Any]:
    """The request for ``post`` (also valid keyword arguments for ``chat.completions.create``).

    ``params`` mixes standard and vLLM names; ``None`` values are dropped, ``max_tokens`` is
    sent as ``max_completion_tokens``, vLLM names go into ``extra_body``, and ``extra_body`` /
    ``model_kwargs`` style entries are merged last.
    """
    params = {k: v for k, v in params.items() if v is not None}
    removed = REMOVED & params.keys()
    if removed:
        raise ValueError(
            f"{sorted(removed)} were removed from vLLM and are silently ignored there; "
            "use response_format or structured_outputs"
        )
    extra_body = dict(params.pop("extra_body", None) or {})
    if "max_tokens" in params:
        params.setdefault("max_completion_tokens", params.pop("max_tokens"))
    request: dict[str, Any] = {"model": params.pop("model", model), "messages": messages}
    for key, value in params.items():
        if key in EXTRA_BODY:
            extra_body.setdefault(key, value)
        else:
            request[key] = value
    if stream:
        request["stream"] = True
        if stream_usage:
            request.setdefault("stream_options", {"include_usage": True})
    if extra_body:
        request["extra_body"] = extra_body
    return request


CUT_OFF = "the call was cut off by the length limit (finish_reason: length)"


def parse_arguments(
    raw: str | None, *, cut_off: bool = False
) -> tuple[dict[str, Any] | None, str | None]:
    """Tool-call arguments as a dict, or the reason they are not one. Empty means ``{}``,
    except in a reply the length limit ``cut_off``: there it means the arguments never came."""
    if raw is None or not raw.strip():
        return (None, CUT_OFF) if cut_off else ({}, None)
    try:
        value = json.loads(raw)
    except ValueError as exc:
        if cut_off:
            return None, CUT_OFF
        return None, f"arguments are not valid JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"arguments must be a JSON object, got {type(value).__name__}"
    return value, None
