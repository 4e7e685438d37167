"""A Weave trace server for tests (weave 0.54): in-process, or over loopback HTTP for clients in
other processes. No network beyond loopback, no credentials.

In process: the pattern of Weave's own test fixtures, a ``WeaveClient`` around the server
object. Over HTTP: the real client's ``RemoteHTTPTraceServer`` against :func:`serve_http`, with
the routes it calls (see ../shared reference tracing.md §3.2). The methods are the few the
client calls for op tracing, call queries (filters, Mongo-like ``query``, sort, pages,
feedback in the summary) and feedback.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from types import SimpleNamespace as NS
from typing import Any

os.environ.setdefault("WEAVE_PRINT_CALL_LINK", "false")
os.environ.setdefault("WEAVE_USE_SERVER_CACHE", "false")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")

UTC = datetime.UTC


def _time(value: Any) -> Any:
    if isinstance(value, str):
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def _field(call: dict[str, Any], path: str) -> Any:
    value: Any = call
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if path in ("started_at", "ended_at") and isinstance(value, datetime.datetime):
        return value.timestamp()
    return value


def _evaluate(expr: Any, call: dict[str, Any]) -> Any:
    """Weave's query operators, as far as the tests use them."""
    if not isinstance(expr, dict):
        return expr
    ((op, arg),) = expr.items()
    if op == "$getField":
        return _field(call, arg)
    if op == "$literal":
        return arg
    if op == "$and":
        return all(_evaluate(e, call) for e in arg)
    if op == "$or":
        return any(_evaluate(e, call) for e in arg)
    if op == "$not":
        return not _evaluate(arg[0], call)
    left, right = (_evaluate(e, call) for e in arg)
    if op == "$in":
        return left in right
    if left is None or right is None:
        return op == "$eq" and left == right
    compare = {
        "$eq": lambda a, b: a == b,
        "$gt": lambda a, b: a > b,
        "$gte": lambda a, b: a >= b,
        "$lt": lambda a, b: a < b,
        "$lte": lambda a, b: a <= b,
    }
    return compare[op](left, right)


def _op_matches(op_name: str, wanted: list[str]) -> bool:
    return any(op_name == w or (w.endswith(":*") and op_name.startswith(w[:-1])) for w in wanted)


class FakeTraceServer:
    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}
        self.objs: dict[Any, Any] = {}
        self.files: dict[str, Any] = {}
        self.feedback: list[dict[str, Any]] = []
        self.queries = 0
        self._lock = threading.RLock()

    def get_call_processor(self) -> None:
        return None  # the synchronous call_start/call_end path

    def get_feedback_processor(self) -> None:
        return None

    def ensure_project_exists(self, entity: str, project: str) -> NS:
        return NS(project_name=project)

    def server_info(self) -> NS:
        return NS(min_required_weave_python_version="0.0.0", trace_server_version=None)

    def _upsert(self, call_id: str, fields: dict[str, Any]) -> None:
        for key in ("started_at", "ended_at"):
            if key in fields:
                fields[key] = _time(fields[key])
        with self._lock:
            # merged: the client's background sender may deliver a call's end before its start
            self.calls.setdefault(call_id, {}).update(fields)

    def call_start(self, req: Any) -> NS:
        start = dict(req["start"])
        call_id = start.get("id") or str(uuid.uuid4())
        trace_id = start.get("trace_id") or call_id
        start.update(id=call_id, trace_id=trace_id)
        self._upsert(call_id, start)
        return NS(id=call_id, trace_id=trace_id)

    def call_end(self, req: Any) -> NS:
        end = dict(req["end"])
        fields = ("ended_at", "output", "summary", "exception")
        self._upsert(end["id"], {k: end[k] for k in fields if k in end})
        return NS()

    def calls_complete(self, req: Any) -> NS:
        for call in req["batch"]:
            self._upsert(call["id"], dict(call))
        return NS()

    def call_update(self, req: Any) -> NS:
        return NS()

    def _feedback_on(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        ref = f"/call/{call['id']}"
        return [
            {**f, "created_at": f["created_at"].isoformat()}
            for f in self.feedback
            if f["weave_ref"].endswith(ref)
        ]

    def query_calls(self, req: Any) -> list[dict[str, Any]]:
        """The calls a ``calls_query_stream`` request asks for, as plain dicts."""
        self.queries += 1
        wanted = {
            k: set(v) if k in ("call_ids", "trace_ids", "parent_ids") and v is not None else v
            for k, v in (req.get("filter") or {}).items()
        }
        expr = (req.get("query") or {}).get("$expr")
        with self._lock:
            calls = [dict(c) for c in self.calls.values() if "op_name" in c]
        found = []
        for call in calls:
            if call.get("project_id", req["project_id"]) != req["project_id"]:
                continue
            if wanted.get("call_ids") is not None and call["id"] not in wanted["call_ids"]:
                continue
            if wanted.get("trace_ids") is not None and call["trace_id"] not in wanted["trace_ids"]:
                continue
            if wanted.get("trace_roots_only") and call.get("parent_id"):
                continue
            if wanted.get("parent_ids") and call.get("parent_id") not in wanted["parent_ids"]:
                continue
            if wanted.get("op_names") and not _op_matches(call["op_name"], wanted["op_names"]):
                continue
            if expr is not None and not _evaluate(expr, call):
                continue
            found.append(call)
        for order in reversed(req.get("sort_by") or []):
            found.sort(
                key=lambda c, f=order["field"]: (_field(c, f) is None, _field(c, f) or 0),
                reverse=order.get("direction") == "desc",
            )
        offset = req.get("offset") or 0
        limit = req.get("limit")
        found = found[offset : None if limit is None else offset + limit]
        if req.get("include_feedback"):
            with self._lock:
                for call in found:
                    summary = dict(call.get("summary") or {})
                    summary["weave"] = {
                        **(summary.get("weave") or {}),
                        "feedback": self._feedback_on(call),
                    }
                    call["summary"] = summary
        return [{**c, "project_id": c.get("project_id", req["project_id"])} for c in found]

    def calls_query_stream(self, req: Any) -> Iterator[Any]:
        from weave.vendor.weave_server_sdk.types.call_read_response import Call

        for call in self.query_calls(req):
            yield Call.model_validate(call)

    def calls_query_stats(self, req: Any) -> NS:
        return NS(count=len(self.query_calls(req)), total_storage_size_bytes=0)

    def obj_create(self, req: Any) -> NS:
        obj = req["obj"]
        digest = hashlib.sha256(
            json.dumps(obj["val"], sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        with self._lock:
            self.objs[(obj["object_id"], digest)] = obj
        return NS(digest=digest, object_id=obj["object_id"], version_index=0)

    def file_create(self, req: Any) -> NS:
        digest = hashlib.sha256(repr(sorted(req.items())).encode()).hexdigest()[:16]
        with self._lock:
            self.files[digest] = req
        return NS(digest=digest)

    def table_create(self, req: Any) -> NS:
        rows = req["table"]["rows"]
        return NS(digest=uuid.uuid4().hex[:16], row_digests=[uuid.uuid4().hex[:16] for _ in rows])

    def _add_feedback(self, req: Any) -> dict[str, Any]:
        with self._lock:  # the server's clock orders feedback, as W&B's does
            item = {
                **dict(req),
                "id": req.get("id") or str(uuid.uuid4()),
                "created_at": datetime.datetime.now(UTC),
                "wb_user_id": req.get("wb_user_id") or "u",
            }
            self.feedback.append(item)
        return item

    def feedback_create(self, req: Any) -> NS:
        item = self._add_feedback(req)
        return NS(
            id=item["id"],
            created_at=item["created_at"],
            wb_user_id=item["wb_user_id"],
            payload=item.get("payload"),
        )

    def feedback_create_batch(self, req: Any) -> NS:
        items = [self._add_feedback(item) for item in req["batch"]]
        return NS(
            res=[
                NS(id=i["id"], created_at=i["created_at"], wb_user_id="u", payload=i["payload"])
                for i in items
            ]
        )

    def feedback_query(self, req: Any) -> NS:
        with self._lock:
            return NS(result=list(self.feedback))


def weave_client(server: FakeTraceServer) -> Any:
    """A WeaveClient on the fake server, set as the global client (as ``weave.init`` does)."""
    from weave.trace import weave_client as wc
    from weave.trace.context import weave_client_context

    client = wc.WeaveClient("local", "test", server, ensure_project_exists=False)
    weave_client_context.set_weave_client_global(client)
    return client


# -- over HTTP ---------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, NS):
        return {k: _jsonable(v) for k, v in vars(value).items()}
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def http_app(server: FakeTraceServer) -> Any:
    """The routes ``RemoteHTTPTraceServer`` (weave 0.54) calls, over ``server``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def plain(method: str) -> Any:
        async def handle(request: Request) -> JSONResponse:
            body = await request.json()
            return JSONResponse(_jsonable(getattr(server, method)(body)))

        return handle

    async def server_info(request: Request) -> JSONResponse:
        return JSONResponse(
            {"min_required_weave_python_version": "0.0.0", "trace_server_version": "fake"}
        )

    async def stream_query(request: Request) -> Response:
        calls = server.query_calls(await request.json())
        lines = "".join(json.dumps(_jsonable(c)) + "\n" for c in calls)
        return Response(lines, media_type="application/jsonl")

    async def calls_complete(request: Request) -> JSONResponse:
        body = await request.json()
        server.calls_complete(body)
        return JSONResponse({})

    async def file_create(request: Request) -> JSONResponse:
        # multipart; the bytes' digest is all the client reads back
        return JSONResponse({"digest": hashlib.sha256(await request.body()).hexdigest()[:16]})

    routes = [
        Route("/server_info", server_info, methods=["GET"]),
        Route("/calls/stream_query", stream_query, methods=["POST"]),
        Route("/v2/{entity}/{project}/calls/complete", calls_complete, methods=["POST"]),
        Route("/file/create", file_create, methods=["POST"]),
    ]
    for path, method in {
        "/call/start": "call_start",
        "/call/end": "call_end",
        "/call/update": "call_update",
        "/calls/query_stats": "calls_query_stats",
        "/obj/create": "obj_create",
        "/table/create": "table_create",
        "/feedback/create": "feedback_create",
        "/feedback/batch/create": "feedback_create_batch",
        "/feedback/query": "feedback_query",
    }.items():
        routes.append(Route(path, plain(method), methods=["POST"]))
    return Starlette(routes=routes)


class HTTPTraceServer:
    """``with HTTPTraceServer() as url:`` a fake Weave trace server on a loopback port."""

    def __init__(self, server: FakeTraceServer | None = None) -> None:
        self.server = server or FakeTraceServer()
        self.url = ""
        self._uvicorn: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HTTPTraceServer:
        import socket
        import time

        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(http_app(self.server), log_level="warning", lifespan="off")
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        while not self._uvicorn.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


def http_weave_client(
    url: str, entity: str = "team", project: str = "agents", *, set_global: bool = True
) -> Any:
    """The real client (``RemoteHTTPTraceServer``, batched background sends, as ``weave.init``
    builds it) for a trace server at ``url``, set as the global client unless told not to."""
    from weave.trace import weave_client as wc
    from weave.trace.context import weave_client_context
    from weave.trace_server_bindings.remote_http_trace_server import RemoteHTTPTraceServer

    client = wc.WeaveClient(
        entity, project, RemoteHTTPTraceServer(url, should_batch=True), ensure_project_exists=False
    )
    if set_global:
        weave_client_context.set_weave_client_global(client)
    return client
