"""The chat protocol, once, for every adapter: build the request (standard OpenAI fields plus
vLLM extras), and parse responses and stream chunks (tool calls, reasoning, usage, logprobs,
token ids). Adapters only convert their framework's types to and from these OpenAI-shaped dicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import openai
from pydantic import BaseModel, Field

from wandb_serverless.config import describe_endpoint
from wandb_serverless.rollouts.recorder import (
    RECORDING_GUARD,
    LLMCall,
    current_rollout,
    make_choice,
)

# Standard fields the openai SDK takes as keyword arguments.
STANDARD_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "seed",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "stop",
        "max_completion_tokens",
        "reasoning_effort",
        "user",
        "metadata",
        "service_tier",
    }
)
# vLLM extras W&B accepts: the SDK rejects unknown kwargs, so they travel in ``extra_body``.
VLLM_PARAMS = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "min_tokens",
        "stop_token_ids",
        "include_stop_str_in_output",
        "ignore_eos",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "chat_template_kwargs",
        "structured_outputs",
        "cache_salt",
        "priority",
        "return_token_ids",
        "return_tokens_as_token_ids",
        "add_generation_prompt",
        "continue_final_message",
        "include_reasoning",
        "truncate_prompt_tokens",
    }
)
# Removed from vLLM (>=0.12) and silently ignored there: never sent.
REMOVED_PARAMS = frozenset({"guided_json", "guided_regex", "guided_choice", "guided_grammar"})


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


def recording() -> bool:
    """True while a rollout is recording in this context."""
    return current_rollout() is not None


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
    if recording():
        # Inside a rollout the trainer needs the exact tokens: ask for them unless the caller
        # explicitly said no. vLLM-style servers return them; others ignore the extras.
        params.setdefault("logprobs", True)
        params.setdefault("return_token_ids", True)
    removed = REMOVED_PARAMS & params.keys()
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
        if key in VLLM_PARAMS:
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


def post(client: openai.OpenAI | openai.AsyncOpenAI, request: dict[str, Any]) -> Any:
    """Send a ``build_request`` result through an openai client: a dict, or a stream of dicts.

    Uses the SDK's transport (auth, headers, timeouts, retries, error types, SSE) but not its
    per-call TypedDict transform and response models: those cost ~1.3 ms per call (measured,
    bench/RESULTS.md) and would only be dumped back to dicts here. For an ``AsyncOpenAI`` the
    result is awaitable. ``extra_body`` entries are merged into the body and win, as in the SDK.

    Inside a rollout the call is recorded with the exact tokens the server returned, with no
    trace hook involved (the hooks leave our adapters' calls to this).
    """
    body = dict(request)
    body.update(body.pop("extra_body", None) or {})
    stream = bool(body.get("stream"))
    is_async = isinstance(client, openai.AsyncOpenAI)
    stream_cls = openai.AsyncStream[object] if is_async else openai.Stream[object]
    try:
        result = client.post(
            "/chat/completions", body=body, cast_to=object, stream=stream, stream_cls=stream_cls
        )  # a coroutine for an AsyncOpenAI: nothing is sent before it is awaited
    except openai.APIConnectionError as exc:
        name_endpoint(exc, client.base_url)
        raise
    if is_async:
        return _apost(client, request, result, stream, recording())
    if not recording():
        return result
    return _recorded_stream(request, result) if stream else _record(request, result)


def name_endpoint(exc: openai.APIConnectionError, url: Any) -> None:
    """The SDK's "Connection error." gets the URL it could not reach, and whose it is."""
    text = f"{exc.message.rstrip('.')}: could not reach {describe_endpoint(str(url))}"
    exc.message, exc.args = text, (text,)


def _record(request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    choices = response.get("choices") or []
    if choices:
        choice = choices[0]
        _add_call(
            request,
            choice.get("message") or {},
            choice.get("finish_reason"),
            choice.get("logprobs"),
            choice.get("token_ids"),
            response.get("prompt_token_ids"),
        )
    return response


def _recorded_stream(request: dict[str, Any], chunks: Any) -> Any:
    accumulator = StreamAccumulator()
    try:
        for chunk in chunks:
            accumulator.add(chunk)
            yield chunk
    finally:  # a consumer that stops early still releases the connection
        chunks.close()
    accumulator.record(request)


async def _apost(
    client: Any, request: dict[str, Any], sent: Any, stream: bool, record: bool
) -> Any:
    try:
        result = await sent
    except openai.APIConnectionError as exc:
        name_endpoint(exc, client.base_url)
        raise
    if not record:
        return result
    if not stream:
        return _record(request, result)

    async def chunks() -> Any:
        accumulator = StreamAccumulator()
        try:
            async for chunk in result:
                accumulator.add(chunk)
                yield chunk
        finally:
            await result.close()
        accumulator.record(request)

    return chunks()


def _add_call(
    request: dict[str, Any],
    message: dict[str, Any],
    finish_reason: str | None,
    logprobs: dict[str, Any] | None,
    token_ids: list[int] | None,
    prompt_token_ids: list[int] | None,
) -> None:
    def add() -> None:
        run = current_rollout()
        if run is None:
            return
        body = {k: v for k, v in message.items() if k != "role" and v is not None}
        body.setdefault("content", None)
        choice = make_choice(
            body,
            finish_reason=finish_reason,
            logprobs=logprobs,
            token_ids=token_ids,
            prompt_token_ids=prompt_token_ids,
        )
        run.add_call(LLMCall(request["messages"], request.get("tools"), choice))

    RECORDING_GUARD.run(add)


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


@dataclass
class ToolCall:
    id: str | None
    name: str
    arguments: str


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cache_read: int | None = None
    reasoning: int | None = None

    @classmethod
    def parse(cls, usage: dict[str, Any] | None) -> Usage | None:
        if not usage:
            return None
        prompt = usage.get("prompt_tokens") or 0
        completion = usage.get("completion_tokens") or 0
        return cls(
            input_tokens=prompt,
            output_tokens=completion,
            total_tokens=usage.get("total_tokens") or prompt + completion,
            cache_read=(usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            reasoning=(usage.get("completion_tokens_details") or {}).get("reasoning_tokens"),
        )


def _reasoning(message: dict[str, Any]) -> str | None:
    # W&B's current docs say `reasoning`; older servers (and vLLM < 0.17) `reasoning_content`.
    return message.get("reasoning") or message.get("reasoning_content") or None


@dataclass
class Completion:
    """One choice of a chat completion, with everything trace hooks and trainers need."""

    content: str
    reasoning: str | None
    tool_calls: list[ToolCall]
    finish_reason: str | None
    model: str | None
    id: str | None
    usage: Usage | None
    metadata: dict[str, Any] = field(default_factory=dict)
    raw_choice: dict[str, Any] = field(default_factory=dict)


def as_dict(obj: Any) -> dict[str, Any]:
    """An openai response object (or dict) as a plain dict, unknown vLLM fields included."""
    if isinstance(obj, dict):
        return obj
    return obj.model_dump(mode="json", exclude_unset=False)


def parse_completion(response: Any) -> list[Completion]:
    """Every choice of a ``chat.completion`` response."""
    data = as_dict(response)
    usage = Usage.parse(data.get("usage"))
    out = []
    for choice in data.get("choices") or []:
        message = choice.get("message") or {}
        calls = [
            ToolCall(c.get("id"), c["function"]["name"], c["function"].get("arguments") or "")
            for c in message.get("tool_calls") or []
            if c.get("function")
        ]
        metadata = {
            "model_name": data.get("model"),
            "id": data.get("id"),
            "system_fingerprint": data.get("system_fingerprint"),
            "finish_reason": choice.get("finish_reason"),
        }
        for key in ("logprobs", "stop_reason", "token_ids"):
            if choice.get(key) is not None:
                metadata[key] = choice[key]
        if data.get("prompt_token_ids") is not None:
            metadata["prompt_token_ids"] = data["prompt_token_ids"]
        out.append(
            Completion(
                content=message.get("content") or "",
                reasoning=_reasoning(message),
                tool_calls=calls,
                finish_reason=choice.get("finish_reason"),
                model=data.get("model"),
                id=data.get("id"),
                usage=usage,
                metadata={k: v for k, v in metadata.items() if v is not None},
                raw_choice=choice,
            )
        )
    return out


@dataclass
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass
class Delta:
    """One stream chunk's contribution to choice 0 (or the usage-only final chunk)."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class StreamParser:
    """Turns chunks into Deltas; tolerates servers that omit a tool call's ``index``."""

    def __init__(self) -> None:
        self._index_by_id: dict[str, int] = {}
        self._last_index = -1

    def _index(self, call: dict[str, Any]) -> int:
        if call.get("index") is not None:
            self._last_index = int(call["index"])
        elif call.get("id"):
            self._last_index = self._index_by_id.setdefault(call["id"], len(self._index_by_id))
        else:
            self._last_index = max(self._last_index, 0)
        if call.get("id"):
            self._index_by_id.setdefault(call["id"], self._last_index)
        return self._last_index

    def parse(self, chunk: Any) -> Delta:
        data = as_dict(chunk)
        delta = Delta(
            usage=Usage.parse(data.get("usage")), model=data.get("model"), id=data.get("id")
        )
        choices = data.get("choices") or []
        if not choices:
            return delta
        choice = choices[0]
        body = choice.get("delta") or {}
        delta.content = body.get("content") or ""
        delta.reasoning = _reasoning(body) or ""
        for call in body.get("tool_calls") or []:
            function = call.get("function") or {}
            delta.tool_calls.append(
                ToolCallDelta(
                    self._index(call),
                    call.get("id"),
                    function.get("name"),
                    function.get("arguments") or "",
                )
            )
        delta.finish_reason = choice.get("finish_reason")
        for key in ("logprobs", "token_ids", "stop_reason"):
            if choice.get(key) is not None:
                delta.metadata[key] = choice[key]
        if choice.get("prompt_token_ids") is not None:
            delta.metadata["prompt_token_ids"] = choice["prompt_token_ids"]
        if data.get("prompt_token_ids") is not None:
            delta.metadata["prompt_token_ids"] = data["prompt_token_ids"]
        return delta


class StreamAccumulator:
    """Accumulates a stream's chunks into the whole turn: text, reasoning, tool calls (by
    index), logprobs, token ids, finish reason and usage."""

    def __init__(self) -> None:
        self.parser = StreamParser()
        self.content = ""
        self.reasoning = ""
        self.calls: dict[int, ToolCall] = {}
        self.token_ids: list[int] = []
        self.logprobs: list[dict[str, Any]] = []
        self.prompt_token_ids: list[int] | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def add(self, chunk: Any) -> Delta:
        delta = self.parser.parse(chunk)
        self.content += delta.content
        self.reasoning += delta.reasoning
        for part in delta.tool_calls:
            call = self.calls.setdefault(part.index, ToolCall(part.id, part.name or "", ""))
            call.id = call.id or part.id
            call.name = call.name or (part.name or "")
            call.arguments += part.arguments
        self.token_ids += delta.metadata.get("token_ids") or []
        self.logprobs += (delta.metadata.get("logprobs") or {}).get("content") or []
        if "prompt_token_ids" in delta.metadata:
            self.prompt_token_ids = delta.metadata["prompt_token_ids"]
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.usage = delta.usage or self.usage
        return delta

    def tool_calls(self) -> list[ToolCall]:
        return [self.calls[i] for i in sorted(self.calls)]

    def message(self) -> dict[str, Any]:
        """The turn as an OpenAI assistant message."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.reasoning:
            message["reasoning"] = self.reasoning
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls()
            ]
        return message

    def record(self, request: dict[str, Any]) -> None:
        """Add the finished turn to the rollout open in this context."""
        _add_call(
            request,
            self.message(),
            self.finish_reason,
            {"content": self.logprobs} if self.logprobs else None,
            self.token_ids or None,
            self.prompt_token_ids,
        )
