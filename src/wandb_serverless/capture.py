"""Recording chat completions made through any ``openai`` client: OpenAI's Agents SDK, Pydantic
AI, smolagents, AutoGen, instructor, your own code. No change to how the framework builds its
client: from the first rollout (or ``capture_openai()``) on, the SDK's
``chat.completions.create`` (sync and async) is wrapped, and the wrapper acts only while a
rollout is open in the caller's context: there each call asks for exact tokens (``logprobs``
and vLLM's ``return_token_ids``, unless the caller set ``logprobs``) and its turn, streamed or
not, goes through the same recording path as our adapters' (``calls.record_reply`` /
``calls.record_streamed``): a call a trace hook watches is recorded once. Elsewhere a call goes
straight to the SDK's own method. ``uninstall()`` puts the SDK's methods back; ``disable()``
(or ``WANDB_SERVERLESS_CAPTURE=0``) also keeps them back. It stays wrapped between rollouts:
switching a class attribute for every rollout cost more than the wrapper's check (measured,
bench/RESULTS.md).

Not recorded: the Responses API (a warning, once a process: point the framework at chat
completions, e.g. the Agents SDK's ``set_default_openai_api("chat_completions")``), and calls
through ``with_streaming_response`` (raw HTTP, no parsed turn; ``with_raw_response``, which
LangChain's ChatOpenAI uses, is recorded). A
response without token ids (a server that does not return them) is kept as context, never
trained on re-tokenised text: counted in ``STATS`` and logged once.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import openai
from openai._legacy_response import LegacyAPIResponse
from openai.resources.chat.completions import AsyncCompletions, Completions
from openai.resources.responses import AsyncResponses, Responses

from wandb_serverless.calls import record_reply, record_streamed
from wandb_serverless.chat.parse import StreamAccumulator, as_dict, parse_completion
from wandb_serverless.rollouts.recorder import Rollout, current_rollout, on_rollout_open

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


def _given(value: Any) -> bool:
    return value is not None and not isinstance(value, openai.NotGiven | openai.Omit)


def ask_for_tokens(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments, asking for logprobs and token ids unless the caller chose."""
    request = {k: v for k, v in kwargs.items() if _given(v)}
    request.setdefault("logprobs", True)
    if request["logprobs"]:
        request["extra_body"] = {"return_token_ids": True, **(request.get("extra_body") or {})}
    return request


def _as_request(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What was sent, as plain JSON-like dicts (the recorder's messages and tools)."""
    request = dict(kwargs)
    request["messages"] = [as_dict(m) for m in kwargs.get("messages") or []]
    if _given(kwargs.get("tools")):
        request["tools"] = [as_dict(t) for t in kwargs["tools"]]
    else:
        request.pop("tools", None)
    return request


def _record_reply(request: dict[str, Any], result: Any) -> None:
    completions = parse_completion(result)
    if completions and completions[0].raw_choice.get("token_ids") is None:
        raw = completions[0].raw_choice
        if raw.get("logprobs") is not None:
            STATS.without_token_ids += 1
            _warn_once(
                "ids",
                "a captured call to %s returned logprobs but no token ids: its turn is kept "
                "as context, not trained (counted in wandb_serverless.capture.STATS)",
                request.get("model"),
            )
        completions[0].raw_choice = {**raw, "logprobs": None}
    record_reply(request, completions)
    STATS.recorded += 1


def _record_stream(request: dict[str, Any], turn: StreamAccumulator) -> None:
    if turn.logprobs and not turn.token_ids:
        STATS.without_token_ids += 1
        _warn_once("ids", "a captured stream returned logprobs but no token ids: kept as context")
        turn.logprobs = []
    record_streamed(request, turn)
    STATS.recorded += 1


def _in_rollout(record: Callable[[], None]) -> None:
    """Record into the open rollout, or (``capture_openai()`` outside any) a rollout of its
    own; a failure is logged and counted, never raised into the agent."""
    from wandb_serverless.rollouts.recorder import RECORDING_GUARD

    if current_rollout() is not None or _global is None:
        RECORDING_GUARD.run(record)
        return
    with Rollout(group=_global["group"], store=_global["store"]):
        RECORDING_GUARD.run(record)


def _capturing() -> bool:
    return current_rollout() is not None or _global is not None


class _RecordedStream:
    """A ``Stream`` / ``AsyncStream`` that hands on every chunk and records the turn at the end."""

    def __init__(self, stream: Any, request: dict[str, Any]) -> None:
        self._stream, self._request = stream, request
        self._turn = StreamAccumulator()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _add(self, chunk: Any) -> Any:
        self._turn.add(as_dict(chunk))
        return chunk

    def _end(self) -> None:
        request, self._request = self._request, None  # type: ignore[assignment]
        if request is not None:
            _in_rollout(lambda: _record_stream(request, self._turn))

    def __iter__(self) -> Iterator[Any]:
        for chunk in self._stream:
            yield self._add(chunk)
        self._end()

    def __next__(self) -> Any:
        try:
            return self._add(next(self._stream))
        except StopIteration:
            self._end()
            raise

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for chunk in self._stream:
            yield self._add(chunk)
        self._end()

    async def __anext__(self) -> Any:
        try:
            return self._add(await self._stream.__anext__())
        except StopAsyncIteration:
            self._end()
            raise

    def __enter__(self) -> _RecordedStream:
        self._stream.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stream.__exit__(*exc)

    async def __aenter__(self) -> _RecordedStream:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._stream.__aexit__(*exc)


def _handle(request: dict[str, Any], result: Any) -> Any:
    if isinstance(result, openai.Stream | openai.AsyncStream):
        return _RecordedStream(result, _as_request(request))
    if isinstance(result, openai.BaseModel):
        _in_rollout(lambda: _record_reply(_as_request(request), result))
    elif isinstance(result, LegacyAPIResponse):  # with_raw_response (LangChain's ChatOpenAI)
        parsed = result.parse()  # parsed once: the SDK caches it for the caller's parse()
        handled = _handle(request, parsed)
        for key, value in list(result._parsed_by_type.items()):
            if value is parsed:  # the caller's parse() gets the recording stream
                result._parsed_by_type[key] = handled
    else:
        STATS.unparsed += 1
    return result


def _raw_stream(kwargs: dict[str, Any]) -> bool:
    """``with_streaming_response``: the caller reads raw HTTP, there is no turn to record."""
    headers = kwargs.get("extra_headers")
    return isinstance(headers, dict) and headers.get("X-Stainless-Raw-Response") == "stream"


def _wrap_create(original: Any) -> Any:
    @functools.wraps(original)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        if args or not _capturing() or _raw_stream(kwargs):
            return original(self, *args, **kwargs)
        request = ask_for_tokens(kwargs)
        return _handle(request, original(self, **request))

    return create


def _wrap_acreate(original: Any) -> Any:
    @functools.wraps(original)
    async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        if args or not _capturing() or _raw_stream(kwargs):
            return await original(self, *args, **kwargs)
        request = ask_for_tokens(kwargs)
        return _handle(request, await original(self, **request))

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
