"""Conversion between LlamaIndex chat types and the core's OpenAI-shaped dicts."""

from __future__ import annotations

import base64
import json
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ImageBlock,
    LogProb,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)

from wandb_serverless import chat as protocol


def _image_url(block: ImageBlock) -> str:
    if block.url:
        return str(block.url)
    data = block.image or b""
    if hasattr(data, "read"):
        data = data.read()
    if not isinstance(data, bytes | bytearray):
        data = bytes(data)
    try:  # LlamaIndex stores images base64-encoded already
        base64.b64decode(data, validate=True)
        encoded = data.decode()
    except ValueError:
        encoded = base64.b64encode(data).decode()
    return f"data:{block.image_mimetype or 'image/png'};base64,{encoded}"


def to_openai_message(message: ChatMessage) -> dict[str, Any]:
    """One LlamaIndex message → an OpenAI message dict (thinking blocks are not re-sent)."""
    role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
    texts: list[str] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        elif isinstance(block, ToolCallBlock):
            args = block.tool_kwargs
            arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            calls.append(
                {
                    "id": block.tool_call_id,
                    "type": "function",
                    "function": {"name": block.tool_name, "arguments": arguments},
                }
            )
    calls += message.additional_kwargs.get("tool_calls") or []  # older integrations' place
    only_text = all(p["type"] == "text" for p in parts)
    content: Any = "".join(texts) if only_text else parts
    if role == MessageRole.TOOL.value:
        call_id = message.additional_kwargs.get("tool_call_id")
        return {"role": "tool", "tool_call_id": call_id, "content": "".join(texts)}
    if role == MessageRole.CHATBOT.value:
        role = "assistant"
    out: dict[str, Any] = {"role": role, "content": content}
    if calls and role == "assistant":
        out["tool_calls"] = calls
        out["content"] = content or None
    return out


def to_openai_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    return [to_openai_message(m) for m in messages]


def logprobs_of(metadata: dict[str, Any]) -> list[list[LogProb]] | None:
    """OpenAI logprobs → LlamaIndex's per-token lists (each token with its top alternatives)."""
    content = (metadata.get("logprobs") or {}).get("content")
    if not content:
        return None
    out = []
    for entry in content:
        top = entry.get("top_logprobs") or []
        tokens = [entry, *[t for t in top if t.get("token") != entry.get("token")]]
        out.append(
            [
                LogProb(token=t["token"], logprob=t["logprob"], bytes=t.get("bytes") or [])
                for t in tokens
            ]
        )
    return out


def assistant_message(
    content: str, reasoning: str | None, calls: list[protocol.ToolCall], *, cut_off: bool = False
) -> ChatMessage:
    """The assistant turn as blocks: thinking, text, then tool calls (arguments kept raw when
    they are not a JSON object, or the length limit ``cut_off`` the reply, so nothing the model
    wrote is lost)."""
    blocks: list[Any] = []
    if reasoning:
        blocks.append(ThinkingBlock(content=reasoning))
    if content:
        blocks.append(TextBlock(text=content))
    for call in calls:
        args, _ = protocol.parse_arguments(call.arguments, cut_off=cut_off)
        blocks.append(
            ToolCallBlock(
                tool_call_id=call.id,
                tool_name=call.name,
                tool_kwargs=args if args is not None else call.arguments,
            )
        )
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks)


def usage_kwargs(usage: protocol.Usage | None) -> dict[str, int]:
    """Usage in the keys LlamaIndex integrations use in ``additional_kwargs``."""
    if usage is None:
        return {}
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }
