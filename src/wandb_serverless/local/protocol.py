"""The chat-completions contract of the local server: the request schema (OpenAI fields plus
vLLM extras), turning a request into a prompt, sampling parameters and a constraint, and the
OpenAI-shaped pieces of responses (logprobs, usage)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wandb_serverless.chat.params import LOCAL_REJECTED
from wandb_serverless.local import grammar
from wandb_serverless.local.engine_api import OutputConstraint, SamplingParams
from wandb_serverless.local.tools import UnsupportedContentError, prepare_messages


class BadRequest(ValueError):
    """A request this server understands but cannot serve: answered 400 with the message (and
    the parameter at fault, in vLLM's error shape, where one is)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    """vLLM's: usage on a last chunk (``include_usage``, on unless false) and on every chunk
    (``continuous_usage_stats``)."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False
    include_obfuscation: bool | None = None  # OpenAI's padding against side channels: a no-op


INT64 = 2**63
MAX_ROLE_CHARS = 256
#: vLLM's --max-logprobs default: the most top_logprobs / prompt_logprobs a request may ask
DEFAULT_MAX_LOGPROBS = 20
# apply_chat_template's own arguments: a request may not set them through chat_template_kwargs
RENDERING_ARGUMENTS = {
    "chat_template", "tokenize", "tools", "documents", "messages", "conversation", "padding",
    "truncation", "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask",
    "tokenizer_kwargs", "add_generation_prompt", "continue_final_message", "processor_kwargs",
}  # fmt: skip


class ChatCompletionRequest(BaseModel):
    """OpenAI chat-completions request with vLLM's extras. Unknown keys are accepted; numbers
    must be finite and within range (a NaN temperature is a 422, never a broken batch)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    messages: list[dict[str, Any]] = Field(min_length=1)
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1, lt=2**31)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(default=None, ge=-INT64, le=INT64 - 1)
    max_tokens: int | None = Field(default=None, ge=1, lt=INT64)
    max_completion_tokens: int | None = Field(default=None, ge=1, lt=INT64)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # checked against the vocabulary in plan()
    include_stop_str_in_output: bool = False
    min_tokens: int = Field(default=0, ge=0, lt=INT64)
    ignore_eos: bool = False
    n: int = Field(default=1, ge=1, le=16)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=-1)  # -1: the vocabulary; see plan()
    prompt_logprobs: int | None = Field(default=None, ge=-1)
    echo: bool = False
    bad_words: list[str] | None = Field(default=None, max_length=1024)
    allowed_token_ids: list[int] | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    return_token_ids: bool = False
    return_tokens_as_token_ids: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _messages_have_roles(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Any role, as vLLM: roles other than OpenAI's go to the chat template as they are.
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if not isinstance(role, str) or not role.strip():
                raise ValueError(f"messages[{i}].role must be a non-empty string")
            if len(role) > MAX_ROLE_CHARS:
                raise ValueError(f"messages[{i}].role is longer than {MAX_ROLE_CHARS} characters")
        return messages


@dataclass
class Plan:
    """What the engine runs for one request."""

    prompt_ids: list[int]
    params: SamplingParams
    constraint: OutputConstraint | None
    tool_names: set[str]
    tool_mode: Literal["none", "auto", "forced"]


def _template_variables(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``chat_template_kwargs`` may set template variables (``enable_thinking``...) only: no
    template of the request's own, no tokenizing, no other rendering argument."""
    for key, value in (kwargs or {}).items():
        if key in RENDERING_ARGUMENTS or not key.isidentifier():
            raise BadRequest(
                f"chat_template_kwargs.{key} is not allowed: only template variables (such as "
                "enable_thinking) may be set; the server renders its own chat template"
            )
        if not isinstance(value, bool | int | float | str | None) or (
            isinstance(value, str) and len(value) > 256
        ):
            raise BadRequest(f"chat_template_kwargs.{key} must be a short scalar value")
    return dict(kwargs or {})


def _unsupported(request: ChatCompletionRequest) -> None:
    """Parameters vLLM takes and this backend does not (``chat.params``: local "rejected") are a
    400 when set to anything but their default: never silently ignored."""
    extras = request.model_extra or {}
    for key in LOCAL_REJECTED:
        if key in extras and extras[key] not in (None, False, [], {}):
            hint = (
                " (use structured_outputs or response_format)" if key.startswith("guided_") else ""
            )
            raise BadRequest(f"'{key}' is not supported by the local backend{hint}")


def _tool_mode(request: ChatCompletionRequest) -> tuple[str, list[dict[str, Any]]]:
    """('none'|'auto'|'forced', the tools the grammar or parser may use)."""
    tools = request.tools or []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise BadRequest(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        if not tool["function"].get("name"):
            raise BadRequest(f"tools[{i}].function.name is required")
    choice = request.tool_choice
    if not tools:
        if choice not in (None, "none", "auto"):
            raise BadRequest("tool_choice was set but no tools were given")
        return "none", []
    if choice in (None, "auto"):
        return "auto", tools
    if choice == "none":
        return "none", []
    if choice == "required":
        return "forced", tools
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        picked = [t for t in tools if t["function"]["name"] == name]
        if not picked:
            raise BadRequest(f"tool_choice names {name!r}, which is not among the tools")
        return "forced", picked
    raise BadRequest(f"tool_choice {choice!r} is not one of none, auto, required, or a named tool")


_STRUCTURED_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "json": ((dict, str), "a JSON schema (an object or its JSON text)"),
    "json_object": ((bool,), "true or false"),
    "regex": ((str,), "a string"),
    "choice": ((list,), "a non-empty list of strings"),
    "grammar": ((str,), "a string (Lark, GBNF or EBNF)"),
}


def _schema(value: Any, where: str) -> dict[str, Any]:
    try:
        schema = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        raise BadRequest(f"{where} is not valid JSON") from None
    if not isinstance(schema, dict):
        raise BadRequest(f"{where} must be a JSON schema object")
    return schema


def _response_format(fmt: dict[str, Any]) -> OutputConstraint:
    kind = fmt.get("type")
    if kind == "json_object":
        return OutputConstraint("json_object")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise BadRequest("response_format.json_schema must be an object with a 'schema'")
        schema = _schema(
            spec.get("schema", spec.get("json_schema")), "response_format.json_schema.schema"
        )
        return OutputConstraint("json", schema)
    raise BadRequest(f"response_format type {kind!r} is not supported (use json_schema)")


def _structured_output(key: str, value: Any) -> OutputConstraint:
    expected, described = _STRUCTURED_TYPES[key]
    if not isinstance(value, expected):
        raise BadRequest(f"structured_outputs.{key} must be {described}")
    if key == "json":
        return OutputConstraint("json", _schema(value, "structured_outputs.json"))
    return OutputConstraint(key, value)  # type: ignore[arg-type]


def _output_constraint(request: ChatCompletionRequest) -> OutputConstraint | None:
    """The one output constraint a request asks for (the engine compiles it)."""
    found: dict[str, OutputConstraint] = {}
    fmt = request.response_format
    if fmt and fmt.get("type") not in (None, "text"):
        found["response_format"] = _response_format(fmt)
    so = {k: v for k, v in (request.structured_outputs or {}).items() if v not in (None, False)}
    unknown = set(so) - set(_STRUCTURED_TYPES)
    if unknown:
        raise BadRequest(f"structured_outputs.{sorted(unknown)[0]} is not supported")
    for key, value in so.items():
        found[f"structured_outputs.{key}"] = _structured_output(key, value)
    if len(found) > 1:
        raise BadRequest(f"only one output constraint per request; got {', '.join(found)}")
    return next(iter(found.values()), None)


def render_prompt(tokenizer: Any, request: ChatCompletionRequest, tools: list[dict]) -> str:
    try:
        messages = prepare_messages(request.messages, tools)
    except (UnsupportedContentError, KeyError, TypeError) as exc:
        raise BadRequest(f"invalid message: {exc}") from None
    if request.continue_final_message and request.add_generation_prompt:
        raise BadRequest("continue_final_message and add_generation_prompt cannot both be true")
    kwargs: dict[str, Any] = dict(
        tokenize=False,
        add_generation_prompt=request.add_generation_prompt,
        continue_final_message=request.continue_final_message,
        **_template_variables(request.chat_template_kwargs),
    )
    try:
        rendered = tokenizer.apply_chat_template(messages, **kwargs)
    except Exception as first:
        # Strict templates reject repeated roles: merge consecutive same-role turns and retry.
        merged = _merge_same_roles(messages)
        try:
            rendered = tokenizer.apply_chat_template(merged, **kwargs)
        except Exception:
            raise BadRequest(f"the chat template rejected the messages: {first}") from None
    try:
        rendered.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the messages contain text that is not valid Unicode") from None
    return rendered


def _merge_same_roles(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    merged: list[dict[str, str]] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {
                **merged[-1],
                "content": merged[-1]["content"] + "\n\n" + message["content"],
            }
        else:
            merged.append(dict(message))
    return merged


def _token_ids(values: list[int], vocab_size: int, what: str) -> list[int]:
    for value in values:
        if not 0 <= value < vocab_size:
            raise BadRequest(
                f"{what}: {value} is not a token id of this model (vocabulary size "
                f"{vocab_size}: ids 0..{vocab_size - 1})",
                param=what,
            )
    return values


def _logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """Token ids to biases; every bad key is named at once (as vLLM does)."""
    bias = bias or {}
    ids = {key: _integer(key) for key in bias}
    not_ids = [key for key, token in ids.items() if token is None]
    if not_ids:
        raise BadRequest(
            f"logit_bias keys must be token ids (integers): {', '.join(map(repr, not_ids))}",
            param="logit_bias",
        )
    tokens = {key: token for key, token in ids.items() if token is not None}
    out_of_range = [key for key, token in tokens.items() if not 0 <= token < vocab_size]
    if out_of_range:
        raise BadRequest(
            f"logit_bias contains token ids {', '.join(out_of_range)} outside the vocabulary "
            f"(size {vocab_size}: ids 0..{vocab_size - 1})",
            param="logit_bias",
        )
    for key, value in bias.items():
        if not -100 <= value <= 100:
            raise BadRequest(f"logit_bias[{key}] must be between -100 and 100", param="logit_bias")
    return {tokens[key]: value for key, value in bias.items()}


def _integer(text: str) -> int | None:
    try:  # int() itself decides: "²" passes str.isdigit() and fails int()
        return int(text)
    except ValueError:
        return None


def _logprob_count(value: int | None, name: str, vocab_size: int, max_logprobs: int) -> int | None:
    """``top_logprobs`` / ``prompt_logprobs`` as a count: -1 is the whole vocabulary, and no
    count may pass the server's ``max_logprobs`` (-1: no limit), as vLLM's --max-logprobs."""
    if value is None:
        return None
    count = vocab_size if value == -1 else value
    if max_logprobs != -1 and count > max_logprobs:
        raise BadRequest(
            f"{name} ({value}{' = the vocabulary' if value == -1 else ''}) is more than this "
            f"server's max_logprobs ({max_logprobs}); start it with a larger --max-logprobs",
            param=name,
        )
    return count


def _bad_words(tokenizer: Any, words: list[str] | None) -> list[list[int]]:
    """Each bad word as token sequences, alone and after a space (vLLM's tokenizing of them)."""
    out: list[list[int]] = []
    for i, word in enumerate(words or []):
        variants = [
            tokenizer(text, add_special_tokens=False).input_ids
            for text in (word.lstrip(), " " + word.lstrip())
        ]
        if not variants[0]:
            raise BadRequest(f"bad_words[{i}] ({word!r}) is no token at all", param="bad_words")
        out += [ids for ids in variants if ids and ids not in out]
    return out


def _allowed(ids: list[int] | None, vocab_size: int) -> list[int] | None:
    if ids is None:
        return None
    if not ids:
        raise BadRequest("allowed_token_ids must not be empty", param="allowed_token_ids")
    return sorted(set(_token_ids(ids, vocab_size, "allowed_token_ids")))


def _truncated(prompt_ids: list[int], keep: int | None, context_length: int) -> list[int]:
    """``truncate_prompt_tokens``: the prompt's last ``keep`` tokens (-1: the context length)."""
    if keep is None:
        return prompt_ids
    if keep > context_length:
        raise BadRequest(
            f"truncate_prompt_tokens ({keep}) is greater than the context length "
            f"({context_length}); please request a smaller value",
            param="truncate_prompt_tokens",
        )
    keep = context_length if keep == -1 else keep
    return prompt_ids[-keep:] if keep else []


def plan(
    request: ChatCompletionRequest,
    tokenizer: Any,
    *,
    context_length: int,
    default_max_tokens: int,
    vocab_size: int,
    max_logprobs: int = DEFAULT_MAX_LOGPROBS,
) -> Plan:
    """Validate a request and turn it into prompt ids, sampling parameters and an output
    constraint."""
    _unsupported(request)
    options = request.stream_options
    if options is not None and not request.stream and options.model_fields_set:
        raise BadRequest(
            "Stream options can only be defined when `stream=True`.", param="stream_options"
        )
    mode, tools = _tool_mode(request)
    structured = _output_constraint(request)
    if structured is not None and mode == "forced":
        raise BadRequest(
            "response_format/structured_outputs cannot be combined with a forced tool call"
        )
    rendered = render_prompt(tokenizer, request, tools if mode != "none" else [])
    prompt_ids = tokenizer(rendered, add_special_tokens=False).input_ids
    prompt_ids = _truncated(prompt_ids, request.truncate_prompt_tokens, context_length)
    if not prompt_ids:
        raise BadRequest("the prompt is empty (truncate_prompt_tokens: 0)")
    limit = request.max_completion_tokens or request.max_tokens
    room = context_length - len(prompt_ids)
    if room <= 0 or (limit is not None and limit > room):
        asked = f" plus {limit} completion tokens" if limit else ""
        raise BadRequest(
            f"This model's maximum context length is {context_length} tokens. However, you "
            f"requested {len(prompt_ids)} prompt tokens{asked}."
        )
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    top = _logprob_count(request.top_logprobs, "top_logprobs", vocab_size, max_logprobs) or 0
    if top and not request.logprobs:
        raise BadRequest("top_logprobs requires logprobs: true", param="top_logprobs")
    prompt_logprobs = _logprob_count(
        request.prompt_logprobs, "prompt_logprobs", vocab_size, max_logprobs
    )
    if request.stream and prompt_logprobs:
        raise BadRequest(
            "prompt_logprobs are not available when stream=True", param="prompt_logprobs"
        )
    if request.stream:
        prompt_logprobs = None  # 0 with a stream: nothing to send it in (vLLM's rule too)
    bias = _logit_bias(request.logit_bias, vocab_size)
    params = SamplingParams(
        max_tokens=limit or min(default_max_tokens, room),
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=request.top_p or 1.0,
        top_k=request.top_k if request.top_k and request.top_k > 0 else 0,
        min_p=request.min_p or 0.0,
        repetition_penalty=request.repetition_penalty or 1.0,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        logit_bias=bias,
        seed=request.seed,
        stop=stop,
        stop_token_ids=_token_ids(list(request.stop_token_ids or []), vocab_size, "stop_token_ids"),
        include_stop_str_in_output=request.include_stop_str_in_output,
        min_tokens=request.min_tokens,
        ignore_eos=request.ignore_eos,
        top_logprobs=top,
        prompt_logprobs=prompt_logprobs,
        bad_words=_bad_words(tokenizer, request.bad_words),
        allowed_token_ids=_allowed(request.allowed_token_ids, vocab_size),
    )
    if mode == "forced":
        structured = OutputConstraint("grammar", grammar.tool_call_lark(tools))
    names = {t["function"]["name"] for t in tools} if mode != "none" else set()
    return Plan(prompt_ids, params, structured, names, mode)  # type: ignore[arg-type]


class TokenText:
    """Exact bytes and display text of every token id, for logprobs entries."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.table = _token_bytes(tokenizer, vocab_size)

    def decoded(self, token_id: int, as_ids: bool) -> str:
        """The token as text, or ``token_id:<id>`` (``return_tokens_as_token_ids``)."""
        if as_ids:
            return f"token_id:{token_id}"
        raw = self.table[token_id] if token_id < len(self.table) else b""
        return raw.decode("utf-8", errors="replace")

    def entry(self, token_id: int, logprob: float, as_ids: bool) -> dict[str, Any]:
        raw = self.table[token_id] if token_id < len(self.table) else b""
        return {"token": self.decoded(token_id, as_ids), "logprob": logprob, "bytes": list(raw)}


def _token_bytes(tokenizer: Any, vocab_size: int) -> list[bytes]:
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    specials = set(tokenizer.all_special_tokens) | set(
        getattr(tokenizer, "added_tokens_encoder", {})
    )
    decoder = _byte_decoder()
    table: list[bytes] = []
    for token_id, piece in enumerate(pieces):
        if piece is None:
            table.append(b"")
        elif piece in specials or not all(ch in decoder for ch in piece):
            table.append(tokenizer.decode([token_id]).encode())
        else:
            table.append(bytes(decoder[ch] for ch in piece))
    return table


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    visible += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(visible), 0
    for byte in range(256):
        if byte not in visible:
            visible.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(visible, chars, strict=True)}
