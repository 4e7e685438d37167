"""Sending a built request through an openai client, with no per-call SDK models."""

from __future__ import annotations

from typing import Any

import openai

from wandb_serverless.config import describe_endpoint


def post(client: openai.OpenAI | openai.AsyncOpenAI, request: dict[str, Any]) -> Any:
    """Send a ``build_request`` result through an openai client: a dict, or a stream of dicts.

    Uses the SDK's transport (auth, headers, timeouts, retries, error types, SSE) but not its
    per-call TypedDict transform and response models: those cost ~1.3 ms per call (measured,
    bench/RESULTS.md) and would only be dumped back to dicts here. For an ``AsyncOpenAI`` the
    result is awaitable. ``extra_body`` entries are merged into the body and win, as in the SDK.
    """
    body = dict(request)
    body.update(body.pop("extra_body", None) or {})
    stream = bool(body.get("stream"))
    try:
        if isinstance(client, openai.AsyncOpenAI):  # nothing is sent before it is awaited
            sent = client.post(
                "/chat/completions",
                body=body,
                cast_to=object,
                stream=stream,
                stream_cls=openai.AsyncStream[Any],
            )
            return _named(client, sent)
        return client.post(
            "/chat/completions",
            body=body,
            cast_to=object,
            stream=stream,
            stream_cls=openai.Stream[Any],
        )
    except openai.APIConnectionError as exc:
        name_endpoint(exc, client.base_url)
        raise


async def _named(client: Any, sent: Any) -> Any:
    try:
        return await sent
    except openai.APIConnectionError as exc:
        name_endpoint(exc, client.base_url)
        raise


def name_endpoint(exc: openai.APIConnectionError, url: Any) -> None:
    """The SDK's "Connection error." gets the URL it could not reach, and whose it is."""
    text = f"{exc.message.rstrip('.')}: could not reach {describe_endpoint(str(url))}"
    exc.message, exc.args = text, (text,)
