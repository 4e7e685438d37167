"""A scripted HTTP server on loopback for fault injection: real sockets, no patched httpx.

Each route holds a queue of responses served in order (the last one repeats). Every request is
recorded with its headers and JSON body so tests can assert on what actually went over the wire.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class FaultServer:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply]] = defaultdict(list)
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                record = Recorded(
                    self.command,
                    split.path,
                    parse_qs(split.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                reply = server._next(record)
                if reply.delay:
                    time.sleep(reply.delay)
                if isinstance(reply.body, str):  # as it is (an SSE stream, a broken body)
                    payload = reply.body.encode()
                else:
                    payload = json.dumps(reply.body).encode() if reply.body is not None else b""
                headers = {"content-type": "application/json", **reply.headers}
                try:
                    self.send_response(reply.status)
                    self.send_header("content-length", str(len(payload)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_DELETE = do_PUT = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def on(self, method: str, path: str, *replies: Reply) -> FaultServer:
        self.routes[(method, "/v1" + path)].extend(replies)
        return self

    def _next(self, record: Recorded) -> Reply:
        with self._lock:
            self.requests.append(record)
            queue = self.routes.get((record.method, record.path))
            if not queue:
                return Reply(404, {"detail": f"no route {record.method} {record.path}"})
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == "/v1" + path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
