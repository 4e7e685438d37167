"""Chat responses and stream chunks parsed into turns: text, reasoning, tool calls (fragments
merged by index), finish reason, usage, logprobs and token ids. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCall:
    id: str | None
    name: str
    arguments: str


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cache_read: int | None = None
    reasoning: int | None = None

    @classmethod
    def parse(cls, usage: dict[str, Any] | None) -> Usage | None:
        if not usage:
            return None
        prompt = usage.get("prompt_tokens") or 0
        completion = usage.get("completion_tokens") or 0
        return cls(
            input_tokens=prompt,
            output_tokens=completion,
            total_tokens=usage.get("total_tokens") or prompt + completion,
            cache_read=(usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            reasoning=(usage.get("completion_tokens_details") or {}).get("reasoning_tokens"),
        )


def reasoning_text(message: dict[str, Any]) -> str | None:
    """A message's or delta's reasoning, under either name servers use."""
    # W&B's current docs say `reasoning`; older servers (and vLLM < 0.17) `reasoning_content`.
    return message.get("reasoning") or message.get("reasoning_content") or None


@dataclass
class Completion:
    """One choice of a chat completion, with everything trace hooks and trainers need."""

    content: str
    reasoning: str | None
    tool_calls: list[ToolCall]
    finish_reason: str | None
    model: str | None
    id: str | None
    usage: Usage | None
    metadata: dict[str, Any] = field(default_factory=dict)
    raw_choice: dict[str, Any] = field(default_factory=dict)


def as_dict(obj: Any) -> dict[str, Any]:
    """An openai response object (or dict) as a plain dict, unknown vLLM fields included."""
    if isinstance(obj, dict):
        return obj
    return obj.model_dump(mode="json", exclude_unset=False)


def parse_completion(response: Any) -> list[Completion]:
    """Every choice of a ``chat.completion`` response."""
    data = as_dict(response)
    usage = Usage.parse(data.get("usage"))
    out = []
    for choice in data.get("choices") or []:
        message = choice.get("message") or {}
        calls = [
            ToolCall(c.get("id"), c["function"]["name"], c["function"].get("arguments") or "")
            for c in message.get("tool_calls") or []
            if c.get("function")
        ]
        metadata = {
            "model_name": data.get("model"),
            "id": data.get("id"),
            "system_fingerprint": data.get("system_fingerprint"),
            "finish_reason": choice.get("finish_reason"),
        }
        for key in ("logprobs", "stop_reason", "token_ids"):
            if choice.get(key) is not None:
                metadata[key] = choice[key]
        if data.get("prompt_token_ids") is not None:
            metadata["prompt_token_ids"] = data["prompt_token_ids"]
        out.append(
            Completion(
                content=message.get("content") or "",
                reasoning=reasoning_text(message),
                tool_calls=calls,
                finish_reason=choice.get("finish_reason"),
                model=data.get("model"),
                id=data.get("id"),
                usage=usage,
                metadata={k: v for k, v in metadata.items() if v is not None},
                raw_choice=choice,
            )
        )
    return out


@dataclass
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass
class Delta:
    """One stream chunk's contribution to choice 0 (or the usage-only final chunk)."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # the chunk as the server sent it


class StreamParser:
    """Turns chunks into Deltas; tolerates servers that omit a tool call's ``index``."""

    def __init__(self) -> None:
        self._index_by_id: dict[str, int] = {}
        self._last_index = -1

    def _index(self, call: dict[str, Any]) -> int:
        if call.get("index") is not None:
            self._last_index = int(call["index"])
        elif call.get("id"):
            self._last_index = self._index_by_id.setdefault(call["id"], len(self._index_by_id))
        else:
            self._last_index = max(self._last_index, 0)
        if call.get("id"):
            self._index_by_id.setdefault(call["id"], self._last_index)
        return self._last_index

    def parse(self, chunk: Any) -> Delta:
        data = as_dict(chunk)
        delta = Delta(
            usage=Usage.parse(data.get("usage")),
            model=data.get("model"),
            id=data.get("id"),
            raw=data,
        )
        choices = data.get("choices") or []
        if not choices:
            return delta
        choice = choices[0]
        body = choice.get("delta") or {}
        delta.content = body.get("content") or ""
        delta.reasoning = reasoning_text(body) or ""
        for call in body.get("tool_calls") or []:
            function = call.get("function") or {}
            delta.tool_calls.append(
                ToolCallDelta(
                    self._index(call),
                    call.get("id"),
                    function.get("name"),
                    function.get("arguments") or "",
                )
            )
        delta.finish_reason = choice.get("finish_reason")
        for key in ("logprobs", "token_ids", "stop_reason"):
            if choice.get(key) is not None:
                delta.metadata[key] = choice[key]
        if choice.get("prompt_token_ids") is not None:
            delta.metadata["prompt_token_ids"] = choice["prompt_token_ids"]
        if data.get("prompt_token_ids") is not None:
            delta.metadata["prompt_token_ids"] = data["prompt_token_ids"]
        return delta


class StreamAccumulator:
    """Accumulates a stream's chunks into the whole turn: text, reasoning, tool calls (by
    index), logprobs, token ids, finish reason and usage."""

    def __init__(self) -> None:
        self.parser = StreamParser()
        self.content = ""
        self.reasoning = ""
        self.calls: dict[int, ToolCall] = {}
        self.token_ids: list[int] = []
        self.logprobs: list[dict[str, Any]] = []
        self.prompt_token_ids: list[int] | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def add(self, chunk: Any) -> Delta:
        delta = self.parser.parse(chunk)
        self.content += delta.content
        self.reasoning += delta.reasoning
        for part in delta.tool_calls:
            call = self.calls.setdefault(part.index, ToolCall(part.id, part.name or "", ""))
            call.id = call.id or part.id
            call.name = call.name or (part.name or "")
            call.arguments += part.arguments
        self.token_ids += delta.metadata.get("token_ids") or []
        self.logprobs += (delta.metadata.get("logprobs") or {}).get("content") or []
        if "prompt_token_ids" in delta.metadata:
            self.prompt_token_ids = delta.metadata["prompt_token_ids"]
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.usage = delta.usage or self.usage
        return delta

    def tool_calls(self) -> list[ToolCall]:
        return [self.calls[i] for i in sorted(self.calls)]

    def message(self) -> dict[str, Any]:
        """The turn as an OpenAI assistant message."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.reasoning:
            message["reasoning"] = self.reasoning
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls()
            ]
        return message
