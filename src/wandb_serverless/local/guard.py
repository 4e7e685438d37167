"""The server's outer guard: a request body limit (413) and a last-resort JSON 500.

Both answer in the error shape of the path's API (``errors.error_body``) and let the connection live on:
Starlette's own fallback answers a bug with plain text and re-raises, which makes uvicorn drop
the keep-alive connection.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi.exceptions import HTTPException

from wandb_serverless.local.errors import error_body

log = logging.getLogger(__name__)
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


async def _send_json(send: Any, status: int, detail: str, path: str) -> None:
    body = json.dumps(error_body(path, status, detail)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: bodies over ``max_body_bytes`` get 413; an unhandled error gets 500."""

    def __init__(self, app: Any, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> str:
        return f"the request body is over the server's limit of {self.max_body_bytes} bytes"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_json(send, 413, self._too_large(), scope.get("path", ""))
            return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # a body sent without a length
                    raise HTTPException(413, self._too_large())
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                message = "The server had an error processing your request"
                await _send_json(send, 500, message, scope.get("path", ""))
