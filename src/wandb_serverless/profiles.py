"""What a model served by W&B (or the local backend) can do: one table for both adapters'
model profiles (LangChain's ``profile``, LlamaIndex's ``metadata``).

Every model behind the W&B / vLLM chat API calls tools (every ``tool_choice``), streams tool
calls, and has its output constrained by the server (``json_schema``, ``json_object`` and
vLLM's ``structured_outputs``), so ``structured_output`` is true for all of them: LangChain's
``create_agent(response_format=X)`` then picks the native (provider) strategy. Context windows
come from the server when it reports one (vLLM and the local backend give ``max_model_len`` in
``/v1/models``; W&B's ``/v1/models`` lists ids only, per its API reference, so W&B's hosts are
not asked), else from W&B's model catalogue (shared/reference/wandb_api.md); a checkpoint
(``wandb-artifact:///...``) or an unknown id on W&B gets the common capabilities without one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx

from wandb_serverless.config import Settings, is_wandb_url

log = logging.getLogger(__name__)

COMMON: dict[str, Any] = {
    "text_inputs": True,
    "text_outputs": True,
    "tool_calling": True,
    "tool_choice": True,
    "tool_call_streaming": True,
    "structured_output": True,  # constrained decoding on the server
    "temperature": True,
    "reasoning_output": False,
}

_REASONING = {"reasoning_output": True}
_GPT_OSS = {**_REASONING, "reasoning_effort_levels": ["low", "medium", "high"]}

KNOWN: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B-Instruct": {"max_input_tokens": 128_000},
    "meta-llama/Llama-3.1-70B-Instruct": {"max_input_tokens": 128_000},
    "meta-llama/Llama-3.3-70B-Instruct": {"max_input_tokens": 128_000},
    "OpenPipe/Qwen3-14B-Instruct": {"max_input_tokens": 32_768},
    "Qwen/Qwen2.5-14B-Instruct": {"max_input_tokens": 32_768},
    "Qwen/Qwen3-30B-A3B-Instruct-2507": {"max_input_tokens": 262_144},
    "Qwen/Qwen3-235B-A22B-Instruct-2507": {"max_input_tokens": 262_144},
    "Qwen/Qwen3-235B-A22B-Thinking-2507": {"max_input_tokens": 262_144, **_REASONING},
    "Qwen/Qwen3-Coder-480B-A35B-Instruct": {"max_input_tokens": 262_144},
    "openai/gpt-oss-20b": {"max_input_tokens": 131_072, **_GPT_OSS},
    "openai/gpt-oss-120b": {"max_input_tokens": 131_072, **_GPT_OSS},
    "HuggingFaceTB/SmolLM2-135M-Instruct": {"max_input_tokens": 8_192},  # the local default
    "default": {"max_input_tokens": 8_192},  # the local backend's name for it
}


def model_profile(model: str) -> dict[str, Any]:
    """The model's capabilities, in langchain-core's ``ModelProfile`` keys."""
    return {"name": model, **COMMON, **KNOWN.get(model, {})}


def context_window(model: str) -> int | None:
    """The model's context window in tokens, when the table knows it."""
    return KNOWN.get(model, {}).get("max_input_tokens")


_SERVED: OrderedDict[tuple[str, str], int | None] = OrderedDict()  # (base URL, model) -> window
_SERVED_MAX = 256


def served_context_window(model: str, settings: Callable[[], Settings]) -> int | None:
    """The context window the server reports for ``model`` (``max_model_len`` of its card in
    ``GET /models``), asked once a process per base URL and model; None when the server is
    W&B's (or ``WANDB_SERVERLESS_LOCAL=0`` marks it so), says nothing, or cannot be asked (never an error: a window is a planning hint)."""
    try:
        resolved = settings()
        url = resolved.inference_base_url.rstrip("/")
        if is_wandb_url(url) or resolved.local is False:  # W&B (or marked as W&B)
            return None
        key = resolved.require_api_key()
    except Exception:  # no key yet, a bad setting: the adapter says so when it sends
        return None
    if (url, model) not in _SERVED:
        _SERVED[(url, model)] = _ask(url, key, model)
        if len(_SERVED) > _SERVED_MAX:
            _SERVED.popitem(last=False)
    return _SERVED[(url, model)]


def _ask(url: str, key: str, model: str) -> int | None:
    try:
        response = httpx.get(
            f"{url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=2.0
        )
        response.raise_for_status()
        for card in response.json().get("data") or []:
            window = card.get("max_model_len")
            if card.get("id") == model and isinstance(window, int) and window > 0:
                return window
    except Exception as exc:  # the table's window (or none) stands
        log.debug("no context window from %s/models: %s", url, type(exc).__name__)
    return None
