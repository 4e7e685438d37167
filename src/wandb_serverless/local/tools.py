"""Tools for chat templates that have none (SmolLM2's drops them and crashes on tool turns).

The format is Hermes/Qwen2.5's, documented in docs/local-backend.md: tool specs go into the system
message inside ``<tools></tools>``; the model calls a tool by writing
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; assistant tool calls in the history
are rendered the same way, and tool results come back as user turns inside ``<tool_response>``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from wandb_serverless.local.grammar import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

TOOLS_PREAMBLE = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>{{"name": <function-name>, "arguments": <args-json-object>}}</tool_call>"""

_BLOCK = re.compile(
    re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.S
)


class UnsupportedContentError(ValueError):
    """A message part this text-only model cannot take (image, audio, file)."""


def text_of(content: Any) -> str:
    """Message content as text: a string, None, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append(str(part.get("text", "")))
            elif kind in ("refusal",):
                parts.append(str(part.get("refusal", "")))
            else:
                raise UnsupportedContentError(
                    f"content part of type {kind!r} is not supported by this text-only model"
                )
        return "".join(parts)
    raise UnsupportedContentError(f"message content must be a string or a list, got {content!r}")


def format_tool_call(name: str, arguments: str) -> str:
    """One call as the model writes it (compact JSON, exactly what the tool grammar emits)."""
    args = arguments.strip() or "{}"
    return f'{TOOL_CALL_OPEN}{{"name":{json.dumps(name, ensure_ascii=False)},"arguments":{args}}}{TOOL_CALL_CLOSE}'


def _assistant_text(message: dict[str, Any]) -> str:
    text = text_of(message.get("content"))
    calls = [
        format_tool_call(c["function"]["name"], c["function"].get("arguments") or "{}")
        for c in message.get("tool_calls") or []
    ]
    return "\n".join([text, *calls] if text else calls)


def prepare_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, str]]:
    """Plain ``{role, content}`` messages any chat template renders, with tools inlined."""
    prepared: list[dict[str, str]] = []
    for message in messages:
        role = message["role"]
        if role == "developer":
            role = "system"
        if role == "assistant":
            prepared.append({"role": "assistant", "content": _assistant_text(message)})
        elif role in ("tool", "function"):
            body = text_of(message.get("content"))
            prepared.append(
                {"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"}
            )
        else:
            prepared.append({"role": role, "content": text_of(message.get("content"))})
    if tools:
        specs = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        preamble = TOOLS_PREAMBLE.format(tools=specs)
        if prepared and prepared[0]["role"] == "system":
            prepared[0] = {"role": "system", "content": f"{prepared[0]['content']}\n\n{preamble}"}
        else:
            prepared.insert(0, {"role": "system", "content": preamble})
    return prepared


@dataclass
class ParsedCall:
    name: str
    arguments: str
    id: str

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _parse_call(raw: str, names: set[str]) -> ParsedCall | None:
    try:
        obj = json.loads(raw.strip())
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None  # the model may write any JSON: a name that is an object is no call
    if obj["name"] not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False, separators=(",", ":"))
    return ParsedCall(obj["name"], args, new_call_id())


_NAME = r'\s*\{\s*"name"\s*:\s*"(?P<name>(?:[^"\\]|\\.)*)"'
_PARTIAL = re.compile(_NAME + r'\s*(?:,\s*"arguments"\s*:\s*(?P<args>.*))?', re.S)


def cut_off_call(text: str, names: set[str]) -> ParsedCall | None:
    """A forced call the length limit cut off: its name when it was written whole, and its
    arguments so far, which are not valid JSON (clients report an invalid tool call, as
    ``ChatOpenAI`` does for OpenAI's truncated calls). Never the markup as content; no call at
    all when the limit came before the name (vLLM: no ``tool_calls``, content "")."""
    body = text.split(TOOL_CALL_OPEN, 1)[-1]
    body = body[: len(body) - _partial_suffix(body, TOOL_CALL_CLOSE)]
    whole = _parse_call(body, names)
    if whole is not None:  # only the closing tag was cut: the call itself is complete
        return whole
    match = _PARTIAL.match(body)
    if not match:
        return None
    return ParsedCall(json.loads(f'"{match["name"]}"'), match["args"] or "", new_call_id())


def parse_tool_calls(
    text: str, names: set[str], *, cut_off: bool = False
) -> tuple[str | None, list[ParsedCall]]:
    """Split model output into content and tool calls (``<tool_call>`` blocks, or a bare
    ``{"name", "arguments"}`` object as the whole reply). ``cut_off``: the output is a forced
    call the length limit ended, reported as a call with partial arguments."""
    if cut_off:
        call = cut_off_call(text, names)
        return None, [call] if call else []
    calls: list[ParsedCall] = []
    kept: list[str] = []
    position = 0
    for match in _BLOCK.finditer(text):
        raw = match.group(1)
        if match.end() == len(text) and not text.endswith(TOOL_CALL_CLOSE):
            raw = raw[: len(raw) - _partial_suffix(raw, TOOL_CALL_CLOSE)]  # the tag was cut
        call = _parse_call(raw, names)
        if call is None:
            continue
        kept.append(text[position : match.start()])
        position = match.end()
        calls.append(call)
    kept.append(text[position:])
    content = "".join(kept).strip()
    if not calls and content.startswith("{"):
        bare = _parse_call(content, names)
        if bare is not None:
            return None, [bare]
    return (content or None), calls


class ToolStreamParser:
    """Incremental version of :func:`parse_tool_calls` for streaming: content is released as it
    comes, except text that may open a ``<tool_call>`` block, which is held until decided."""

    def __init__(self, names: set[str], *, forced: bool = False) -> None:
        self.names = names
        self.forced = forced  # a forced call: one cut off by the length limit stays a call
        self.buffer = ""
        self.inside = False

    def feed(self, text: str) -> list[str | ParsedCall]:
        self.buffer += text
        out: list[str | ParsedCall] = []
        while True:
            if self.inside:
                end = self.buffer.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return out
                raw, self.buffer = self.buffer[:end], self.buffer[end + len(TOOL_CALL_CLOSE) :]
                self.inside = False
                call = _parse_call(raw, self.names)
                out.append(call if call else f"{TOOL_CALL_OPEN}{raw}{TOOL_CALL_CLOSE}")
                continue
            start = self.buffer.find(TOOL_CALL_OPEN)
            if start >= 0:
                if start:
                    out.append(self.buffer[:start])
                self.buffer = self.buffer[start + len(TOOL_CALL_OPEN) :]
                self.inside = True
                continue
            keep = _partial_suffix(self.buffer, TOOL_CALL_OPEN)
            release = self.buffer[: len(self.buffer) - keep]
            if release:
                out.append(release)
            self.buffer = self.buffer[len(self.buffer) - keep :]
            return out

    def finish(self) -> list[str | ParsedCall]:
        rest, self.buffer = self.buffer, ""
        if self.inside:
            self.inside = False
            call = _parse_call(
                rest[: len(rest) - _partial_suffix(rest, TOOL_CALL_CLOSE)], self.names
            )
            if call is None and self.forced:
                call = cut_off_call(rest, self.names)
                return [call] if call else []
            return [call] if call else [TOOL_CALL_OPEN + rest]
        if self.forced:  # the grammar writes only the call: a tag cut short is not content
            return []
        return [rest] if rest else []


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
