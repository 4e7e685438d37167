"""WandbLLM: LlamaIndex's function-calling LLM on W&B Inference and trained checkpoints."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Generator, Sequence
from typing import Any, Literal

from llama_index.core.base.llms.generic_utils import (
    achat_to_completion_decorator,
    astream_chat_to_completion_decorator,
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, SecretStr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.utils import parse_partial_json
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import BaseTool
from llama_index.core.types import Model
from llama_index.llms.wandb.utils import (
    assistant_message,
    logprobs_of,
    to_openai_messages,
    usage_kwargs,
)
from pydantic import ConfigDict, ValidationError, field_validator

from wandb_serverless import calls, profiles, tokens
from wandb_serverless import chat as protocol
from wandb_serverless.api.client import openai_client
from wandb_serverless.config import ENV_API_KEY, ENV_PROJECT, Settings
from wandb_serverless.rollouts.labels import check_role

DEFAULT_CONTEXT_WINDOW = 8_192


class WandbLLM(FunctionCallingLLM, protocol.SamplingFields):
    """W&B Inference (or your own trained checkpoint) as a LlamaIndex LLM.

    .. code-block:: python

        from llama_index.core import Settings
        from llama_index.llms.wandb import WandbLLM

        Settings.llm = WandbLLM(model="meta-llama/Llama-3.1-8B-Instruct")    # WANDB_API_KEY
        trained = WandbLLM(model="wandb-artifact:///me/agents/sql-agent:latest")

    Tools (``FunctionAgent``, ``chat_with_tools``), structured prediction (``response_format``
    json_schema, constrained on the server, falling back to a forced tool call), streaming with
    accumulated snapshots, async, reasoning as ``ThinkingBlock``, logprobs as ``LogProb``; the
    raw response (token ids included) stays on ``ChatResponse.raw`` for trace hooks.
    """

    model: str = Field(default="default", description="Model id or wandb-artifact:/// reference.")
    api_key: SecretStr | None = Field(
        default=None, exclude=True, description=f"W&B API key ({ENV_API_KEY}; never serialised)."
    )
    base_url: str | None = Field(default=None, alias="api_base", description="Chat endpoint.")
    project: str | None = Field(default=None, description=f"entity/project ({ENV_PROJECT}).")
    timeout: float | None = Field(default=None, description="Seconds per request.")
    max_retries: int = Field(default=2, description="SDK retries (the one retry authority).")
    default_headers: dict[str, str] | None = Field(default=None, description="Extra headers.")
    role: str | None = Field(
        default=None,
        description="The role its turns are recorded as in a multi-role agent (not sent).",
    )
    temperature: float | None = Field(default=None, description="Sampling temperature.")
    max_tokens: int | None = Field(default=None, description="Completion token cap.")
    context_window: int | None = Field(default=None, description="Override the context window.")
    # top_p, seed, penalties, logprobs, reasoning_effort and the vLLM extras (top_k, min_p,
    # return_token_ids, ...): protocol.SamplingFields, shared with ChatWandb.
    strict: bool = Field(default=False, description="Strict JSON schemas for tools.")
    structured_output_method: Literal["json_schema", "function_calling"] = Field(
        default="json_schema", description="How structured_predict asks for JSON."
    )
    additional_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra request fields (vLLM extras included)."
    )

    # ``base_url`` and LlamaIndex's usual ``api_base`` both work; an unknown argument is an
    # error (a typo must not send the key to W&B instead of the server meant).
    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, extra="forbid")

    _clients: dict[str, Any] = PrivateAttr(default_factory=dict)
    _check_role = field_validator("role")(check_role)

    @property
    def api_base(self) -> str | None:
        """The chat endpoint (LlamaIndex's name for ``base_url``)."""
        return self.base_url

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        settings = Settings.resolve(
            api_key=self.api_key, project=self.project, inference_base_url=self.base_url
        )
        self.api_key = settings.api_key
        self.base_url = settings.inference_base_url
        self.project = settings.project_path  # the entity is looked up when first sending

    @classmethod
    def class_name(cls) -> str:
        return "WandbLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window
            or profiles.served_context_window(self.model, self._settings)
            or profiles.context_window(self.model)
            or DEFAULT_CONTEXT_WINDOW,
            num_output=self.max_tokens or -1,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.model,
        )

    @property
    def tokenizer(self) -> ServedTokenizer:
        """The served model's tokenizer (``encode(text) -> ids``, LlamaIndex's ``Tokenizer``),
        e.g. ``Settings.tokenizer = llm.tokenizer.encode``; never a download."""
        return ServedTokenizer(self)

    # -- requests ----------------------------------------------------------------------------

    def _settings(self) -> Settings:
        return Settings.resolve(
            api_key=self.api_key, project=self.project, inference_base_url=self.base_url
        )

    def _client(self, async_client: bool = False) -> Any:
        key = "async" if async_client else "sync"
        if key not in self._clients:
            self._clients[key] = openai_client(
                self._settings(),
                async_client=async_client,
                timeout=self.timeout,
                max_retries=self.max_retries,
                default_headers=self.default_headers,
            )
        return self._clients[key]

    def _request(self, messages: Sequence[ChatMessage], stream: bool, **kwargs: Any) -> dict:
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.sampling_params(),
            **self.additional_kwargs,
            **kwargs,
        }
        return calls.request(
            model=self.model,
            messages=to_openai_messages(list(messages)),
            params=params,
            stream=stream,
        )

    @staticmethod
    def _response(reply: calls.Reply) -> ChatResponse:
        completion = reply.completions[0]
        extra = usage_kwargs(completion.usage)
        for key in ("token_ids", "prompt_token_ids", "finish_reason"):
            if key in completion.metadata:
                extra[key] = completion.metadata[key]
        return ChatResponse(
            message=assistant_message(
                completion.content,
                completion.reasoning,
                completion.tool_calls,
                cut_off=completion.finish_reason == "length",
            ),
            raw=reply.raw,
            logprobs=logprobs_of(completion.metadata),
            additional_kwargs=extra,
        )

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request = self._request(messages, False, **kwargs)
        return self._response(calls.complete(self._client(), request, role=self.role))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request = self._request(messages, False, **kwargs)
        return self._response(await calls.acomplete(self._client(True), request, role=self.role))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        request = self._request(messages, True, **kwargs)

        def gen() -> ChatResponseGen:
            stream = calls.stream(self._client(), request, accumulate=True, role=self.role)
            turn = stream.turn
            assert turn is not None  # accumulate=True
            for delta in stream:
                yield _snapshot(turn, delta)

        return gen()

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        request = self._request(messages, True, **kwargs)
        client = self._client(async_client=True)

        async def gen() -> ChatResponseAsyncGen:
            stream = await calls.astream(client, request, accumulate=True, role=self.role)
            turn = stream.turn
            assert turn is not None  # accumulate=True
            async for delta in stream:
                yield _snapshot(turn, delta)

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return chat_to_completion_decorator(self.chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        return await achat_to_completion_decorator(self.achat)(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        return stream_chat_to_completion_decorator(self.stream_chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return await astream_chat_to_completion_decorator(self.astream_chat)(prompt, **kwargs)

    # -- tools -------------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        specs = [t.metadata.to_openai_tool(skip_length_check=True) for t in tools]
        if strict if strict is not None else self.strict:
            for spec in specs:
                spec["function"]["strict"] = True
                spec["function"].setdefault("parameters", {})["additionalProperties"] = False
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                user_msg
                if isinstance(user_msg, ChatMessage)
                else ChatMessage(role="user", content=user_msg)
            )
        names = [s["function"]["name"] for s in specs]
        choice = (
            tool_choice if tool_choice is not None else ("required" if tool_required else "auto")
        )
        request: dict[str, Any] = {"messages": messages, **kwargs}
        if specs:
            request["tools"] = specs
            request["tool_choice"] = protocol.tool_choice_to_openai(choice, names)
            request["parallel_tool_calls"] = allow_parallel_tool_calls
        return request

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        if not allow_parallel_tool_calls:
            calls = [b for b in response.message.blocks if b.block_type == "tool_call"]
            if len(calls) > 1:
                others = [b for b in response.message.blocks if b.block_type != "tool_call"]
                response.message.blocks = [*others, calls[0]]
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """Tool calls from a response or stream snapshot; partial JSON never raises, except in
        a finished reply the length limit cut off (a call with half its arguments must not run)."""
        selections = []
        cut_off = response.additional_kwargs.get("finish_reason") == "length"
        for block in response.message.blocks:
            if block.block_type != "tool_call":
                continue
            args = block.tool_kwargs
            if cut_off and isinstance(args, str):
                _, error = protocol.parse_arguments(args, cut_off=True)
                if error:
                    limit = self.max_tokens or "the server's default"
                    raise ValueError(f"tool call {block.tool_name!r}: {error}, max_tokens={limit}")
            if isinstance(args, str):
                try:
                    args = parse_partial_json(args) if args.strip() else {}
                except (ValueError, json.JSONDecodeError):
                    args = {}
            selections.append(
                ToolSelection(
                    tool_id=block.tool_call_id or "", tool_name=block.tool_name, tool_kwargs=args
                )
            )
        if not selections and error_on_no_tool_call:
            raise ValueError(
                f"Expected at least one tool call, but got 0: {response.message.content!r}"
            )
        return selections

    # -- structured output -------------------------------------------------------------------

    def _structured_request(
        self, output_cls: type[Model], prompt: PromptTemplate, **args: Any
    ) -> tuple:
        messages = self._extend_messages(prompt.format_messages(llm=self, **args))
        schema = output_cls.model_json_schema()
        response_format = protocol.json_schema_format(schema, name=output_cls.__name__, strict=True)
        return messages, response_format

    def structured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        """JSON-schema constrained on the server; a forced tool call when that fails."""
        if self.structured_output_method == "json_schema":
            messages, fmt = self._structured_request(output_cls, prompt, **prompt_args)
            response = self.chat(messages, response_format=fmt, **(llm_kwargs or {}))
            parsed = _validated(output_cls, response)
            if parsed is not None:
                return parsed
        return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)

    async def astructured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        if self.structured_output_method == "json_schema":
            messages, fmt = self._structured_request(output_cls, prompt, **prompt_args)
            response = await self.achat(messages, response_format=fmt, **(llm_kwargs or {}))
            parsed = _validated(output_cls, response)
            if parsed is not None:
                return parsed
        return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)

    def _structured_stream_call(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Generator[Any, None, None]:
        if self.structured_output_method != "json_schema":
            return super()._structured_stream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, fmt = self._structured_request(output_cls, prompt, **prompt_args)
        stream = self.stream_chat(messages, response_format=fmt, **(llm_kwargs or {}))
        return _partial_objects(output_cls, (r.message.content or "" for r in stream))

    async def _structured_astream_call(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> AsyncGenerator[Any, None]:
        if self.structured_output_method != "json_schema":
            return await super()._structured_astream_call(
                output_cls, prompt, llm_kwargs, **prompt_args
            )
        messages, fmt = self._structured_request(output_cls, prompt, **prompt_args)
        stream = await self.astream_chat(messages, response_format=fmt, **(llm_kwargs or {}))

        async def gen() -> AsyncGenerator[Any, None]:
            last = None
            async for response in stream:
                obj = _partial(output_cls, response.message.content or "")
                if obj is not None and obj != last:
                    last = obj
                    yield obj

        return gen()


def _validated(output_cls: type[Model], response: ChatResponse) -> Model | None:
    """The response parsed as ``output_cls``, or None (the caller falls back to a tool call)."""
    try:
        return output_cls.model_validate_json(response.message.content or "")
    except ValidationError:
        return None


def _partial(output_cls: type[Model], text: str) -> Any:
    """The object so far: validated when complete, a FlexibleModel of the fields so far before."""
    from llama_index.core.program.utils import create_flexible_model

    try:
        return output_cls.model_validate_json(text)
    except ValidationError:
        pass
    try:
        data = parse_partial_json(text) if text.strip() else None
    except (ValueError, json.JSONDecodeError):
        return None
    return (
        create_flexible_model(output_cls).model_validate(data) if isinstance(data, dict) else None
    )


def _partial_objects(output_cls: type[Model], texts: Any) -> Generator[Any, None, None]:
    last = None
    for text in texts:
        obj = _partial(output_cls, text)
        if obj is not None and obj != last:
            last = obj
            yield obj


class ServedTokenizer:
    """``encode`` by the server's ``/tokenize`` (or the model's tokenizer on this machine)."""

    def __init__(self, llm: WandbLLM) -> None:
        self.llm = llm

    def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]:
        return tokens.tokenize(self.llm._client(), self.llm.model, text=text)

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of ``messages`` as the chat prompt the server builds for them."""
        ids = tokens.tokenize(
            self.llm._client(), self.llm.model, messages=to_openai_messages(list(messages))
        )
        return len(ids)


def _snapshot(turn: protocol.StreamAccumulator, delta: protocol.Delta) -> ChatResponse:
    """The cumulative ChatResponse LlamaIndex expects from a stream: the turn so far."""
    extra: dict[str, Any] = usage_kwargs(turn.usage)
    if turn.prompt_token_ids is not None:
        extra["prompt_token_ids"] = turn.prompt_token_ids
    if turn.finish_reason:
        extra["finish_reason"] = turn.finish_reason
    if turn.token_ids:
        extra["token_ids"] = list(turn.token_ids)
    if delta.reasoning:
        extra["thinking_delta"] = delta.reasoning
    return ChatResponse(
        message=assistant_message(
            turn.content,
            turn.reasoning or None,
            turn.tool_calls(),
            cut_off=turn.finish_reason == "length",
        ),
        delta=delta.content,
        raw=delta.raw,
        logprobs=logprobs_of({"logprobs": {"content": turn.logprobs}}),
        additional_kwargs=extra,
    )
