"""LangChain messages ⇄ the core's OpenAI-shaped dicts and parsed turns (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    convert_to_openai_messages,
)
from langchain_core.messages.ai import InputTokenDetails, OutputTokenDetails, UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk

from wandb_serverless import chat as protocol

PROVIDER = "wandb"

# Content blocks that are the model's own reasoning: never sent back (as ChatOpenAI does).
_NOT_RESENT = frozenset({"thinking", "redacted_thinking", "reasoning", "reasoning_content"})

# -- message conversion (pure, unit-testable) ---------------------------------------------------


def convert_messages_to_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages → OpenAI message dicts (tool calls, tool results, images, names).

    Anthropic-style ``tool_use`` blocks become tool calls; reasoning blocks are not re-sent.
    """
    converted = convert_to_openai_messages(list(messages))
    for original, message in zip(messages, converted, strict=True):
        role = original.additional_kwargs.get("__openai_role__")
        if role:
            message["role"] = role
        if isinstance(message.get("content"), list):
            parts = [p for p in message["content"] if p.get("type") not in _NOT_RESENT]
            texts_only = all(p.get("type") == "text" for p in parts)
            message["content"] = "".join(p["text"] for p in parts) if texts_only else parts
        if (
            message["role"] == "assistant"
            and message.get("tool_calls")
            and not message.get("content")
        ):
            message["content"] = None
    return converted


def _usage_metadata(usage: protocol.Usage) -> UsageMetadata:
    metadata = UsageMetadata(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens,
    )
    if usage.cache_read is not None:
        metadata["input_token_details"] = InputTokenDetails(cache_read=usage.cache_read)
    if usage.reasoning is not None:
        metadata["output_token_details"] = OutputTokenDetails(reasoning=usage.reasoning)
    return metadata


def completion_to_message(completion: protocol.Completion) -> AIMessage:
    """One parsed choice → AIMessage; malformed tool-call arguments never raise."""
    calls, invalid = [], []
    cut_off = completion.finish_reason == "length"
    for call in completion.tool_calls:
        args, error = protocol.parse_arguments(call.arguments, cut_off=cut_off)
        if error is None:
            calls.append(tool_call(name=call.name, args=args or {}, id=call.id))
        else:
            invalid.append(
                invalid_tool_call(name=call.name, args=call.arguments, id=call.id, error=error)
            )
    additional = {"reasoning_content": completion.reasoning} if completion.reasoning else {}
    return AIMessage(
        content=completion.content,
        tool_calls=calls,
        invalid_tool_calls=invalid,
        additional_kwargs=additional,
        response_metadata={**completion.metadata, "model_provider": PROVIDER},
        usage_metadata=_usage_metadata(completion.usage) if completion.usage else None,
        id=completion.id,
    )


def delta_to_chunk(delta: protocol.Delta) -> AIMessageChunk:
    additional = {"reasoning_content": delta.reasoning} if delta.reasoning else {}
    metadata = dict(delta.metadata)
    if delta.finish_reason:
        metadata.update(
            finish_reason=delta.finish_reason, model_name=delta.model, model_provider=PROVIDER
        )
    return AIMessageChunk(
        content=delta.content,
        additional_kwargs=additional,
        tool_call_chunks=[
            tool_call_chunk(name=c.name, args=c.arguments, id=c.id, index=c.index)
            for c in delta.tool_calls
        ],
        response_metadata=metadata,
        usage_metadata=_usage_metadata(delta.usage) if delta.usage else None,
        id=delta.id,
    )
