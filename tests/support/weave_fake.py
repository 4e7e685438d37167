"""An in-process Weave trace server (weave 0.54): the client talks to it with no network.

The pattern of Weave's own test fixtures; the methods are the few the client calls for op
tracing, call queries and feedback (see ../shared reference tracing.md, Appendix A).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
from types import SimpleNamespace as NS
from typing import Any

os.environ.setdefault("WEAVE_PRINT_CALL_LINK", "false")
os.environ.setdefault("WEAVE_USE_SERVER_CACHE", "false")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


class FakeTraceServer:
    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}
        self.objs: dict[Any, Any] = {}
        self.files: dict[str, Any] = {}
        self.feedback: list[dict[str, Any]] = []

    def get_call_processor(self) -> None:
        return None  # the synchronous call_start/call_end path

    def get_feedback_processor(self) -> None:
        return None

    def ensure_project_exists(self, entity: str, project: str) -> NS:
        return NS(project_name=project)

    def server_info(self) -> NS:
        return NS(min_required_weave_python_version="0.0.0", trace_server_version=None)

    def call_start(self, req: Any) -> NS:
        start = dict(req["start"])
        call_id = start.get("id") or str(uuid.uuid4())
        trace_id = start.get("trace_id") or call_id
        start.update(id=call_id, trace_id=trace_id)
        # merged: the client's background sender may deliver a call's end before its start
        self.calls.setdefault(call_id, {}).update(start)
        return NS(id=call_id, trace_id=trace_id)

    def call_end(self, req: Any) -> NS:
        end = dict(req["end"])
        fields = ("ended_at", "output", "summary", "exception")
        self.calls.setdefault(end["id"], {}).update({k: end[k] for k in fields if k in end})
        return NS()

    def calls_complete(self, req: Any) -> NS:
        for call in req["batch"]:
            self.calls[call["id"]] = dict(call)
        return NS()

    def call_update(self, req: Any) -> NS:
        return NS()

    def calls_query_stream(self, req: Any) -> Any:
        from weave.vendor.weave_server_sdk.types.call_read_response import Call

        wanted = req.get("filter") or {}
        for call in self.calls.values():
            if wanted.get("call_ids") and call["id"] not in wanted["call_ids"]:
                continue
            if wanted.get("trace_ids") and call["trace_id"] not in wanted["trace_ids"]:
                continue
            if wanted.get("trace_roots_only") and call.get("parent_id"):
                continue
            if wanted.get("parent_ids") and call.get("parent_id") not in wanted["parent_ids"]:
                continue
            yield Call.model_validate(
                {**call, "project_id": call.get("project_id", req["project_id"])}
            )

    def calls_query_stats(self, req: Any) -> NS:
        return NS(count=len(list(self.calls_query_stream(req))), total_storage_size_bytes=0)

    def obj_create(self, req: Any) -> NS:
        obj = req["obj"]
        digest = hashlib.sha256(
            json.dumps(obj["val"], sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        self.objs[(obj["object_id"], digest)] = obj
        return NS(digest=digest, object_id=obj["object_id"], version_index=0)

    def file_create(self, req: Any) -> NS:
        digest = hashlib.sha256(repr(sorted(req.items())).encode()).hexdigest()[:16]
        self.files[digest] = req
        return NS(digest=digest)

    def table_create(self, req: Any) -> NS:
        rows = req["table"]["rows"]
        return NS(digest=uuid.uuid4().hex[:16], row_digests=[uuid.uuid4().hex[:16] for _ in rows])

    def feedback_create(self, req: Any) -> NS:
        feedback_id = str(uuid.uuid4())
        self.feedback.append({**req, "id": feedback_id})
        return NS(
            id=feedback_id,
            created_at=datetime.datetime.now(),
            wb_user_id="u",
            payload=req.get("payload"),
        )

    def feedback_query(self, req: Any) -> NS:
        return NS(result=list(self.feedback))


def weave_client(server: FakeTraceServer) -> Any:
    """A WeaveClient on the fake server, set as the global client (as ``weave.init`` does)."""
    from weave.trace import weave_client as wc
    from weave.trace.context import weave_client_context

    client = wc.WeaveClient("local", "test", server, ensure_project_exists=False)
    weave_client_context.set_weave_client_global(client)
    return client
