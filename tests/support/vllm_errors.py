"""The inference routes answer errors in vLLM's shape (what W&B Inference serves)."""

from __future__ import annotations

from typing import Any


def error_message(body: Any) -> str:
    """The message of an inference route's error body, after checking it has vLLM's shape:
    ``{"error": {"message", "type", "param", "code"}}``."""
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and isinstance(error["code"], int), error
    return error["message"]
