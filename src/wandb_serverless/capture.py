"""Recording chat completions made through any ``openai`` client: OpenAI's Agents SDK, Pydantic
AI, smolagents, AutoGen, instructor, your own code. No change to how the framework builds its
client: from the first rollout (or ``capture_openai()``) on, the SDK's
``chat.completions.create`` (sync and async) is wrapped, and the wrapper acts only while a
rollout is open in the caller's context: there each call asks for exact tokens (``logprobs``
and vLLM's ``return_token_ids``, unless the caller set ``logprobs``) and its turn, streamed or
not, is recorded into the rollout as our adapters' turns are (labels, usage, a call a trace
hook watches recorded once). Elsewhere a call goes straight to the SDK's own method.

What a call pays for (bench/RESULTS.md, "Trace hooks"): a whole reply is read as JSON by
capture and parsed by the SDK for the caller without the logprobs and token ids only capture
asked for (the caller gets what it asked for, and the SDK builds no object a token); a stream
is the SDK's own, its chunks built as the caller asked for them (by the SDK's
``construct_type``, without its parse's dispatch: that spares more than capture's work on a
chunk), its bytes kept as they arrive and its turn recorded when the SDK closes it after the
server's ``[DONE]`` (``capture_streams``). What the call must know at once (usage, the labels)
is read then; the turn is converted when the trajectory is built (``recorder.record_later``).

``uninstall()`` puts the SDK's methods back; ``disable()`` (or ``WANDB_SERVERLESS_CAPTURE=0``)
also keeps them back. It stays wrapped between rollouts: switching a class attribute for every
rollout cost more than the wrapper's check (measured, bench/RESULTS.md).

Not recorded: the Responses API (a warning, once a process: point the framework at chat
completions, e.g. the Agents SDK's ``set_default_openai_api("chat_completions")``), and calls
through ``with_streaming_response`` (raw HTTP, no parsed turn; ``with_raw_response``, which
LangChain's ChatOpenAI uses, is recorded), and a stream whose ``[DONE]`` never came (cut,
or closed before the server finished; one the caller stops reading after that is recorded
whole, as the model made it). A response without token ids (a server that does not return them) is kept as context, never
trained on re-tokenised text: counted in ``STATS`` and logged once.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai
from openai import _models as openai_models
from openai._legacy_response import LegacyAPIResponse
from openai.resources.chat.completions import AsyncCompletions, Completions
from openai.resources.responses import AsyncResponses, Responses

from wandb_serverless.capture_streams import accumulate, tap
from wandb_serverless.chat.parse import as_dict, parse_completion
from wandb_serverless.rollouts.recorder import (
    RECORDING_GUARD,
    Rollout,
    current_rollout,
    on_rollout_open,
    record_later,
    recorded_choice,
)
from wandb_serverless.usage import metering, record_usage

log = logging.getLogger(__name__)


@dataclass
class CaptureStats:
    """What capture did in this process (counters only: nothing grows with the calls)."""

    recorded: int = 0
    without_token_ids: int = 0  # kept as context: the server returned no token ids
    responses_api: int = 0  # Responses API calls inside a rollout: not recorded
    unparsed: int = 0  # a result capture does not know (a raw response): not recorded


STATS = CaptureStats()
_warned: set[str] = set()
_lock = threading.Lock()
_originals: dict[tuple[type, str], Any] = {}
_global: dict[str, Any] | None = None  # capture_openai()'s settings while it is on


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message + " (said once a process)", *args)


_NOT_GIVEN = (openai.NotGiven, openai.Omit)
_STREAMS = (openai.Stream, openai.AsyncStream)


def _given(value: Any) -> bool:
    return value is not None and not isinstance(value, _NOT_GIVEN)


def ask_for_tokens(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments, asking for logprobs and token ids unless the caller chose."""
    request = {k: v for k, v in kwargs.items() if v is not None and not isinstance(v, _NOT_GIVEN)}
    request.setdefault("logprobs", True)
    if request["logprobs"]:
        request["extra_body"] = {"return_token_ids": True, **(request.get("extra_body") or {})}
    return request


def _as_request(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What was sent, as plain JSON-like dicts (the recorder's messages and tools)."""
    request = dict(kwargs)
    request["messages"] = [
        m if type(m) is dict else as_dict(m) for m in kwargs.get("messages") or []
    ]
    if _given(kwargs.get("tools")):
        request["tools"] = [as_dict(t) for t in kwargs["tools"]]
    else:
        request.pop("tools", None)
    return request


def _record_reply(kwargs: dict[str, Any], result: Any) -> None:
    """Record a response's first choice (``result``: the response's JSON data, or the SDK's
    object): what the call must know now (usage, whether token ids came back, the labels) is
    read at once; the turn's conversion waits for the trajectory's build (``record_later``)."""
    request = _as_request(kwargs)
    get = dict.get if type(result) is dict else _field  # capture's own JSON: the main path
    usage = get(result, "usage")
    if usage is not None:
        used = (get(usage, "prompt_tokens") or 0, get(usage, "completion_tokens") or 0)
        record_usage(request.get("model"), *used)
    choices = get(result, "choices") or []
    if not choices:
        return
    first = choices[0]
    exact = _exact(request, get(first, "logprobs") is not None, get(first, "token_ids") is not None)
    record_later(
        request["messages"],
        request.get("tools"),
        lambda: _reply_turn(result, exact),
        model=request.get("model"),
    )
    if len(choices) > 1 and (run := current_rollout()) is not None:
        run.note_unrecorded_choices(len(choices) - 1)
    STATS.recorded += 1


def _field(part: Any, name: str) -> Any:
    """A field of a response (or a part of one), as JSON data or as the SDK's object: the
    fields its types do not declare (vLLM's ``token_ids``) included."""
    if isinstance(part, dict):
        return part.get(name)
    value = getattr(part, name, None)
    return value if value is not None else (getattr(part, "model_extra", None) or {}).get(name)


def _exact(request: dict[str, Any], logprobs: bool, token_ids: bool) -> bool:
    """Whether the turn can be trained on: logprobs and token ids came back. Logprobs without
    token ids (a server that does not return them) are counted and logged, never re-tokenised."""
    if logprobs and not token_ids:
        STATS.without_token_ids += 1
        _warn_once(
            "ids",
            "a captured call to %s returned logprobs but no token ids: its turn is kept "
            "as context, not trained (counted in wandb_serverless.capture.STATS)",
            request.get("model"),
        )
    return logprobs and token_ids


def _reply_turn(result: Any, exact: bool) -> dict[str, Any]:
    first = parse_completion(result)[0]
    raw = first.raw_choice
    return recorded_choice(
        raw.get("message") or {},
        finish_reason=first.finish_reason,
        logprobs=raw.get("logprobs") if exact else None,
        token_ids=raw.get("token_ids"),
        prompt_token_ids=first.metadata.get("prompt_token_ids"),
    )


def _record_stream(request: dict[str, Any], raw: bytes) -> None:
    """Record a finished stream's turn from its bytes (parsed at the trajectory's build; at
    once only for a ``metered()`` block, which counts its usage)."""
    if metering():
        usage = accumulate(raw).usage
        if usage is not None:
            record_usage(request.get("model"), usage.input_tokens, usage.output_tokens)
    record_later(
        request["messages"],
        request.get("tools"),
        lambda: _stream_turn(request, raw),
        model=request.get("model"),
    )
    STATS.recorded += 1


def _stream_turn(request: dict[str, Any], raw: bytes) -> dict[str, Any]:
    turn = accumulate(raw)
    exact = _exact(request, bool(turn.logprobs), bool(turn.token_ids))
    return recorded_choice(
        turn.message(),
        finish_reason=turn.finish_reason,
        logprobs={"content": turn.logprobs} if exact else None,
        token_ids=turn.token_ids or None,
        prompt_token_ids=turn.prompt_token_ids,
    )


def _in_rollout(record: Callable[..., None], *args: Any) -> None:
    """``record(*args)`` into the open rollout, or (``capture_openai()`` outside any) a rollout
    of its own; a failure is logged and counted, never raised into the agent."""
    if current_rollout() is not None or _global is None:
        RECORDING_GUARD.run(record, *args)
        return
    with Rollout(group=_global["group"], store=_global["store"]):
        RECORDING_GUARD.run(record, *args)


def _capturing() -> bool:
    return current_rollout() is not None or _global is not None


def _passes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a call goes straight to the SDK: positional arguments (not the SDK's), outside
    any rollout and ``capture_openai()``, or ``with_streaming_response``."""
    if args or (current_rollout() is None and _global is None):
        return True
    return "extra_headers" in kwargs and _raw_stream(kwargs)


def _handle(request: dict[str, Any], result: Any, asked: dict[str, Any]) -> Any:
    """``result`` as the caller gets it, recorded (``asked``: the caller's own arguments, where
    the chunks of a stream are given to it without what only capture asked for)."""
    if isinstance(result, _STREAMS):
        sent = _as_request(request)
        return tap(result, lambda raw: _in_rollout(_record_stream, sent, raw), _not_asked(asked))
    if isinstance(result, openai.BaseModel):
        _in_rollout(_record_reply, request, result)
    elif isinstance(result, LegacyAPIResponse):  # with_raw_response (LangChain's ChatOpenAI)
        parsed = result.parse()  # parsed once: the SDK caches it for the caller's parse()
        handled = _handle(request, parsed, asked)
        for key, value in list(result._parsed_by_type.items()):
            if value is parsed:  # the caller's parse() gets the recording stream
                result._parsed_by_type[key] = handled
    else:
        STATS.unparsed += 1
    return result


def _raw_stream(kwargs: dict[str, Any]) -> bool:
    """``with_streaming_response``: the caller reads raw HTTP, there is no turn to record."""
    headers = kwargs.get("extra_headers")
    return isinstance(headers, dict) and headers.get(_RAW) == "stream"


_RAW = "X-Stainless-Raw-Response"  # how the SDK's with_raw_response asks for the raw response


def _read_raw(request: dict[str, Any]) -> dict[str, Any] | None:
    """A whole (not streamed) call whose caller wants the parsed object: sent as
    ``with_raw_response`` sends it, so that capture reads the JSON itself (``_reply``). None for
    a stream, or a caller that asked for the raw response itself (LangChain's ChatOpenAI)."""
    headers = request.get("extra_headers")
    if request.get("stream") or (isinstance(headers, dict) and _RAW in headers):
        return None
    return {**request, "extra_headers": {**(headers or {}), _RAW: "true"}}


def _reply(asked: dict[str, Any], request: dict[str, Any], raw: Any) -> Any:
    """The caller's object, as the SDK parses it, from the response without the logprobs and
    token ids that only capture asked for (the caller gets what it asked for, and the SDK does
    not build an object a token: ~60-120 µs a call, measured); the JSON as it came is recorded.
    Whatever capture cannot read goes to the SDK's own parse, which raises as it would."""
    try:
        data = raw.http_response.json()
        parsed = raw._client._process_response_data(
            data=_as_asked(data, asked), cast_to=raw._cast_to, response=raw.http_response
        )
        openai_models.add_request_id(parsed, raw.request_id)
    except Exception:
        STATS.unparsed += 1
        return _handle(request, raw.parse(), asked)
    _in_rollout(_record_reply, request, data)
    return parsed


def _not_asked(asked: dict[str, Any]) -> frozenset[str]:
    """The keys of a reply (and of its choices) that only capture asked for, not the caller."""
    drop = set() if _given(asked.get("logprobs")) else {"logprobs"}
    if "return_token_ids" not in (asked.get("extra_body") or {}):
        drop |= {"token_ids", "prompt_token_ids"}
    return frozenset(drop)


def _as_asked(data: dict[str, Any], asked: dict[str, Any]) -> dict[str, Any]:
    drop = _not_asked(asked)
    out = {k: v for k, v in data.items() if k not in drop}
    out["choices"] = [{k: v for k, v in c.items() if k not in drop} for c in data["choices"]]
    return out


def _wrap_create(original: Any) -> Any:
    @functools.wraps(original)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _passes(args, kwargs):
            return original(self, *args, **kwargs)
        request = ask_for_tokens(kwargs)
        sent = _read_raw(request)
        if sent is not None:
            return _reply(kwargs, request, original(self, **sent))
        return _handle(request, original(self, **request), kwargs)

    return create


def _wrap_acreate(original: Any) -> Any:
    @functools.wraps(original)
    async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _passes(args, kwargs):
            return await original(self, *args, **kwargs)
        request = ask_for_tokens(kwargs)
        sent = _read_raw(request)
        if sent is not None:
            return _reply(kwargs, request, await original(self, **sent))
        return _handle(request, await original(self, **request), kwargs)

    return create


def _wrap_responses(original: Any) -> Any:
    def warn() -> None:
        if _capturing():
            STATS.responses_api += 1
            _warn_once(
                "responses",
                "a Responses API call inside a rollout is not recorded: only chat completions "
                "are (OpenAI's Agents SDK: set_default_openai_api('chat_completions'))",
            )

    if getattr(original, "__code__", None) and original.__code__.co_flags & 0x80:  # async

        @functools.wraps(original)
        async def acreate(self: Any, *args: Any, **kwargs: Any) -> Any:
            warn()
            return await original(self, *args, **kwargs)

        return acreate

    @functools.wraps(original)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        warn()
        return original(self, *args, **kwargs)

    return create


_PATCHES: list[tuple[type, Callable[[Any], Any]]] = [
    (Completions, _wrap_create),
    (AsyncCompletions, _wrap_acreate),
    (Responses, _wrap_responses),
    (AsyncResponses, _wrap_responses),
]


_disabled = os.environ.get("WANDB_SERVERLESS_CAPTURE", "1").strip().lower() in ("0", "false", "no")


def install() -> None:
    """Wrap the SDK's ``create`` methods (idempotent; the first rollout does it)."""
    if _disabled or _originals:  # the fast path: every rollout entered calls this
        return
    with _lock:
        for cls, wrap in _PATCHES:
            if (cls, "create") not in _originals:
                _originals[(cls, "create")] = cls.__dict__["create"]
                setattr(cls, "create", wrap(cls.__dict__["create"]))  # noqa: B010


def uninstall() -> None:
    """Put the SDK's own methods back."""
    with _lock:
        for (cls, name), original in _originals.items():
            setattr(cls, name, original)
        _originals.clear()


def installed() -> bool:
    return bool(_originals)


def disable() -> None:
    """Put the SDK's methods back and keep them so: openai-client calls are not recorded."""
    global _disabled
    _disabled = True
    uninstall()


def enable() -> None:
    """Record openai-client calls inside rollouts again (the default)."""
    global _disabled
    _disabled = False
    install()


class capture_openai:
    """``with capture_openai(store=..., group=...):`` records every chat completion made
    through an openai client, also outside ``rollout()``: each such call becomes a rollout of
    its own (one turn), saved to ``store``. Inside a rollout, calls go to that rollout."""

    def __init__(self, store: Any = None, group: str | None = None) -> None:
        self.settings = {"store": store, "group": group}

    def __enter__(self) -> capture_openai:
        global _global
        if _global is not None:
            raise RuntimeError("capture_openai() is already on in this process")
        _global = self.settings
        install()
        return self

    def __exit__(self, *exc: Any) -> None:
        global _global
        _global = None


on_rollout_open(install)
