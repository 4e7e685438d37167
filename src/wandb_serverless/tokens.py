"""Token counts with the served model's own tokenizer: never a download, never a silent 0.

In order: the server's ``POST /tokenize`` (vLLM's OpenAI server and the local backend have it);
else the model's Hugging Face tokenizer when it is already on this machine (``local_files_only``);
else ``TokenizerUnavailableError`` at once. Adapters use this for LangChain's
``get_num_tokens`` family and LlamaIndex's ``tokenizer``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import openai

from wandb_serverless.chat import name_endpoint

TOKENIZE_TIMEOUT_S = 10.0
_NO_ENDPOINT: set[str] = set()  # servers that answered 404/405 for /tokenize


class TokenizerUnavailableError(RuntimeError):
    """Neither the server nor this machine can tokenize for the model."""


def server_root(base_url: Any) -> str:
    """``http://host:port/v1`` → ``http://host:port`` (vLLM serves /tokenize at the root)."""
    return str(base_url).rstrip("/").removesuffix("/v1")


def tokenize(
    client: openai.OpenAI,
    model: str,
    *,
    text: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Token ids of ``text``, or of ``messages`` (and ``tools``) rendered as the chat prompt the
    server would build for them: its count is that request's ``usage.prompt_tokens``."""
    root = server_root(client.base_url)
    body: dict[str, Any] = {"model": model}
    if text is not None:
        body.update(prompt=text, add_special_tokens=False)
    else:
        body["messages"] = messages
        if tools:
            body["tools"] = tools
    if root not in _NO_ENDPOINT:
        try:
            answer: Any = client.with_options(max_retries=0, timeout=TOKENIZE_TIMEOUT_S).post(
                f"{root}/tokenize", body=body, cast_to=object
            )
            return [int(t) for t in answer["tokens"]]
        except openai.APIConnectionError as exc:
            name_endpoint(exc, root)
            raise
        except openai.APIStatusError as exc:
            if exc.status_code not in (404, 405) or "model" in exc.message.lower():
                raise
            _NO_ENDPOINT.add(root)
    tokenizer = _local_tokenizer(model)
    if tokenizer is None:
        raise TokenizerUnavailableError(
            f"cannot count tokens for {model!r}: the server at {root} has no /tokenize and no "
            "tokenizer for that model is on this machine (none is downloaded); pass "
            "custom_get_token_ids=..., or use a Hugging Face model id whose tokenizer is cached"
        )
    if text is not None:
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    try:
        return list(
            tokenizer.apply_chat_template(
                messages, tools=tools or None, add_generation_prompt=True, tokenize=True
            )
        )
    except Exception as exc:  # the template's own error says what it could not render
        raise TokenizerUnavailableError(
            f"the chat template of {model!r} could not render these messages: {exc}"
        ) from None


@lru_cache(maxsize=8)
def _local_tokenizer(model: str) -> Any:
    """The model's tokenizer if it is on disk (a directory, or in the Hugging Face cache)."""
    if model.startswith("wandb-artifact:"):  # a checkpoint: its base model is the server's
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        return AutoTokenizer.from_pretrained(model, local_files_only=True)
    except Exception:  # not cached, not a model, or no tokenizer files: the caller says so
        return None
