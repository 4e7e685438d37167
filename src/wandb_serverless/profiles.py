"""What a model served by W&B (or the local backend) can do: one table for both adapters'
model profiles (LangChain's ``profile``, LlamaIndex's ``metadata``).

Every model behind the W&B / vLLM chat API calls tools (every ``tool_choice``), streams tool
calls, and has its output constrained by the server (``json_schema``, ``json_object`` and
vLLM's ``structured_outputs``), so ``structured_output`` is true for all of them: LangChain's
``create_agent(response_format=X)`` then picks the native (provider) strategy. Context windows
come from W&B's model catalogue (shared/reference/wandb_api.md); a checkpoint
(``wandb-artifact:///...``) or an unknown id gets the common capabilities without one.
"""

from __future__ import annotations

from typing import Any

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
