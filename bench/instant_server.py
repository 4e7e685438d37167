"""An instant OpenAI-compatible loopback server: canned replies, so only client overhead is timed."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there, how can I help?"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
}
COMPLETION = json.dumps(_REPLY).encode()
# What a recording client asks for (logprobs + return_token_ids): the same reply with its tokens.
_TOKENS = ["Hello", " there", ",", " how", " can", " I", " help", "?"]
COMPLETION_WITH_TOKENS = json.dumps(
    {
        **_REPLY,
        "prompt_token_ids": list(range(1, 11)),
        "choices": [
            {
                **_REPLY["choices"][0],
                "token_ids": list(range(100, 108)),
                "logprobs": {
                    "content": [
                        {
                            "token": t,
                            "logprob": -0.25,
                            "bytes": list(t.encode()),
                            "top_logprobs": [],
                        }
                        for t in _TOKENS
                    ]
                },
            }
        ],
    }
).encode()


def _chunk(delta: dict, finish: str | None = None, **extra: object) -> str:
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}],
    }
    return f"data: {json.dumps(body)}\n\n"


def _stream(tokens: bool) -> bytes:
    """20 content chunks, as vLLM streams them; with ``tokens`` (what a recording client asks
    for) each carries its token's logprob and id, and the first the prompt's token ids."""

    def extra(i: int) -> dict:
        if not tokens:
            return {}
        entry = {"token": f" tok{i}", "logprob": -0.25, "bytes": list(f" tok{i}".encode())}
        return {"logprobs": {"content": [{**entry, "top_logprobs": []}]}, "token_ids": [100 + i]}

    first = _chunk({"role": "assistant", "content": ""})
    if tokens:
        first = first.replace('"object"', '"prompt_token_ids": [1, 2, 3, 4, 5], "object"', 1)
    return (
        first
        + "".join(_chunk({"content": f" tok{i}"}, **extra(i)) for i in range(20))
        + _chunk({}, "stop")
        + 'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}\n\n'
        + "data: [DONE]\n\n"
    ).encode()


STREAM, STREAM_WITH_TOKENS = _stream(False), _stream(True)


def _reply(raw_body: bytes) -> tuple[bytes, str]:
    """The canned payload for a request body, and its content type."""
    body = json.loads(raw_body)
    if body.get("stream"):
        return (STREAM_WITH_TOKENS if body.get("logprobs") else STREAM), "text/event-stream"
    return (COMPLETION_WITH_TOKENS if body.get("logprobs") else COMPLETION), "application/json"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()  # headers and body go out in two writes: no Nagle/delayed-ACK stall
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:
        payload, kind = _reply(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the stdlib's backlog of 5 refuses bursts of concurrent clients
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that reset a kept-alive connection are normal here


def start() -> tuple[str, ThreadingHTTPServer]:
    server = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1", server


def start_process() -> tuple[str, subprocess.Popen]:
    """The same replies from an asyncio server in its own process (own GIL and core), as a real
    server is: the client's costs are then measured without the server's Python work competing
    for the GIL, and a burst of 500 connections costs no thread each (with one, the server's
    500 threads made its latency, and so the client's throughput, swing 2x between bursts)."""
    process = subprocess.Popen(
        [sys.executable, __file__], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    return process.stdout.readline().strip(), process


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,  # a request without a body (not one of the bench's)
            )
            payload, kind = _reply(await reader.readexactly(length))
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                % (kind.encode(), len(payload), payload)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the client closed its kept-alive connection
    finally:
        writer.close()


async def _serve_forever() -> None:
    server = await asyncio.start_server(_serve_connection, "127.0.0.1", 0, backlog=1024)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve_forever())
