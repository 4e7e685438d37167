"""W&B chat models for LangChain: W&B Inference and W&B Serverless Training checkpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

import openai
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput, ModelProfile
from langchain_core.language_models.chat_models import (
    BaseChatModel,
    LangSmithParams,
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils import from_env, secret_from_env
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from langchain_wandb.errors import map_error
from langchain_wandb.messages import (
    PROVIDER,
    completion_to_message,
    convert_messages_to_dicts,
    delta_to_chunk,
)
from wandb_serverless import calls, profiles, tokens
from wandb_serverless import chat as protocol
from wandb_serverless.api.client import openai_client
from wandb_serverless.config import Settings, env_inference_url
from wandb_serverless.rollouts.labels import check_role


class ChatWandb(BaseChatModel, protocol.SamplingFields):
    """W&B chat model: W&B Inference models and your own RL/SFT-trained checkpoints.

    Setup:
        ``pip install langchain-wandb`` and set ``WANDB_API_KEY`` (and optionally
        ``WANDB_PROJECT=entity/project`` for usage attribution).

    Key init args — completion params:
        model: a W&B Inference model id, or a checkpoint reference
            ``wandb-artifact:///entity/project/name[:stepN|:latest]``.
        temperature, max_tokens, stop, top_p, seed, n, presence_penalty, frequency_penalty,
        logit_bias, logprobs, top_logprobs: as in OpenAI.
        top_k, min_p, repetition_penalty, min_tokens, stop_token_ids, return_token_ids,
        reasoning_effort, chat_template_kwargs, structured_outputs, ...: vLLM extras.

    Key init args — client params:
        api_key (``WANDB_API_KEY``), base_url (default W&B Inference), project
        (``entity/project``, sent as the ``OpenAI-Project`` header), timeout, max_retries,
        default_headers, http_client / http_async_client.

    Instantiate:
        .. code-block:: python

            from langchain_wandb import ChatWandb

            llm = ChatWandb(model="meta-llama/Llama-3.1-8B-Instruct", temperature=0)
            trained = ChatWandb(model="wandb-artifact:///me/agents/sql-agent:latest")
            local = ChatWandb(model="default", base_url=backend.base_url, api_key=backend.api_key)

    Invoke:
        .. code-block:: python

            llm.invoke("What is the capital of France?").content

    Stream:
        .. code-block:: python

            for chunk in llm.stream("Tell me a story"):
                print(chunk.content, end="")  # the last chunk carries usage_metadata

    Async:
        .. code-block:: python

            await llm.ainvoke("Hello")
            async for chunk in llm.astream("Hello"): ...

    Tool calling:
        .. code-block:: python

            llm.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?").tool_calls

    Structured output:
        .. code-block:: python

            llm.with_structured_output(Person).invoke("Invent a person")  # json_schema by default

    Response metadata:
        ``model_name`` (as the server reports it), ``finish_reason``, ``id``,
        ``system_fingerprint``, ``logprobs``, and with ``return_token_ids=True`` the exact
        ``prompt_token_ids`` and ``token_ids`` (what the rollout recorder trains on).
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    model: str = Field(default="default")
    """Model id or ``wandb-artifact:///entity/project/name[:stepN|:latest]``."""
    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("WANDB_API_KEY", default=None)
    )
    """W&B API key; read from WANDB_API_KEY when not given."""
    base_url: str | None = Field(default_factory=env_inference_url)
    """Chat endpoint; from WANDB_INFERENCE_BASE_URL, else WANDB_SERVERLESS_BASE_URL, else W&B
    Inference (``wandb_serverless.config`` holds the one precedence)."""
    project: str | None = Field(default_factory=from_env("WANDB_PROJECT", default=None))
    """``entity/project`` for usage attribution (the ``OpenAI-Project`` header)."""
    timeout: float | None = Field(default=None, alias="request_timeout")
    """Seconds per request (None: the SDK's default)."""
    max_retries: int = 2
    """Retries for connection errors, 408, 409, 429 and 5xx (the SDK is the one retry authority)."""
    default_headers: dict[str, str] | None = None
    """Extra headers on every request."""
    http_client: Any = Field(default=None, exclude=True)
    """Optional ``httpx.Client`` for the sync SDK client."""
    http_async_client: Any = Field(default=None, exclude=True)
    """Optional ``httpx.AsyncClient`` for the async SDK client."""
    role: str | None = None
    """The role this model's turns are recorded as in a multi-role agent (a planner, an
    executor): ``RolloutStore.groups(role=...)`` trains each role's model on its own turns.
    Not sent to the server."""

    temperature: float | None = None
    """Sampling temperature."""
    max_tokens: int | None = Field(default=None, alias="max_completion_tokens")
    """Completion token cap (sent as ``max_completion_tokens``)."""
    stop: list[str] | str | None = Field(default=None, alias="stop_sequences")
    """Stop strings."""
    n: int | None = None
    logit_bias: dict[int, int] | None = None
    streaming: bool = False
    """Use streaming under ``invoke`` too."""
    stream_usage: bool = True
    """Ask for the final usage chunk when streaming."""

    # top_p, seed, penalties, logprobs, reasoning_effort and the vLLM extras (top_k, min_p,
    # return_token_ids, ...): protocol.SamplingFields, shared with WandbLLM.

    extra_body: dict[str, Any] | None = None
    """Extra JSON fields merged into the request body (the escape hatch for new vLLM params)."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra top-level request fields (an unknown constructor argument is an error)."""

    _clients: dict[str, Any] = PrivateAttr(default_factory=dict)

    _check_role = field_validator("role")(check_role)

    @model_validator(mode="before")
    @classmethod
    def _build_extra(cls, values: dict[str, Any]) -> Any:
        if not isinstance(values, dict):
            return values
        names = {f.alias or n for n, f in cls.model_fields.items()} | set(cls.model_fields)
        names |= {"api_base", "openai_api_base"}  # base_url's other names
        unknown = sorted(set(values) - names)
        if unknown:  # a typo must not be sent to the server, or dropped, without a word
            # TypeError, as Python's own: pydantic would wrap a ValueError with every input
            # (the API key included) in its message
            raise TypeError(
                f"ChatWandb got unknown argument(s) {unknown}; request fields go in "
                "model_kwargs={...} (top level) or extra_body={...}"
            )
        for alias in ("api_base", "openai_api_base"):
            if alias in values:
                values.setdefault("base_url", values.pop(alias))
        return values

    # -- LangChain plumbing ------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "wandb-chat"

    @property
    def model_name(self) -> str:
        return self.model

    def _resolve_model_profile(self) -> ModelProfile | None:
        """Tool calling, constrained structured output, tool-call streaming for every model;
        the context window the server reports (vLLM, the local backend), else that of known W&B
        models, and their reasoning (``wandb_serverless.profiles``)."""
        profile = profiles.model_profile(self.model)
        served = profiles.served_context_window(self.model, self._settings)
        if served:
            profile["max_input_tokens"] = served
        return ModelProfile(**profile)  # type: ignore[typeddict-item]

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """``dumpd``/``loads`` round-trip it, as ChatOpenAI; the key is a secret reference."""
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_wandb", "chat_models"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "WANDB_API_KEY"}

    @property
    def _default_params(self) -> dict[str, Any]:
        params = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
            "n": self.n,
            "logit_bias": self.logit_bias,
            **self.sampling_params(),
            **self.model_kwargs,
        }
        if self.extra_body:
            params["extra_body"] = self.extra_body
        return {k: v for k, v in params.items() if v is not None}

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, **self._default_params}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = self._get_invocation_params(stop=stop, **kwargs)
        ls = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=kwargs.get("model", self.model),
            ls_model_type="chat",
        )
        if params.get("temperature") is not None:
            ls["ls_temperature"] = params["temperature"]
        if params.get("max_tokens") is not None:
            ls["ls_max_tokens"] = params["max_tokens"]
        if stop or self.stop:
            ls["ls_stop"] = stop or ([self.stop] if isinstance(self.stop, str) else self.stop)
        return ls

    # -- the SDK clients ---------------------------------------------------------------------

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
                http_client=self.http_async_client if async_client else self.http_client,
            )
        return self._clients[key]

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, stream: bool, **kwargs: Any
    ) -> dict[str, Any]:
        kwargs.pop("ls_structured_output_format", None)
        params = {**self._default_params, **kwargs}
        if stop is not None:
            params["stop"] = stop
        stream_usage = params.pop("stream_usage", self.stream_usage)
        if stream and params.get("n", 1) > 1:
            raise ValueError("n > 1 is not supported when streaming")
        return calls.request(
            model=self.model,
            messages=convert_messages_to_dicts(messages),
            params=params,
            stream=stream,
            stream_usage=stream_usage,
        )

    # -- generation --------------------------------------------------------------------------

    @staticmethod
    def _result(reply: calls.Reply) -> ChatResult:
        generations = []
        for completion in reply.completions:
            info = {"finish_reason": completion.finish_reason}
            if "logprobs" in completion.metadata:
                info["logprobs"] = completion.metadata["logprobs"]
            message = completion_to_message(completion)
            generations.append(ChatGeneration(message=message, generation_info=info))
        first = reply.raw
        return ChatResult(
            generations=generations,
            llm_output={
                "token_usage": first.get("usage"),
                "model_name": first.get("model"),
                "model_provider": PROVIDER,
                "system_fingerprint": first.get("system_fingerprint"),
                "id": first.get("id"),
            },
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        request = self._request(messages, stop, False, **kwargs)
        try:
            return self._result(calls.complete(self._client(), request, role=self.role))
        except openai.APIError as exc:
            raise map_error(exc) from exc

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        request = self._request(messages, stop, False, **kwargs)
        try:
            return self._result(
                await calls.acomplete(self._client(async_client=True), request, role=self.role)
            )
        except openai.APIError as exc:
            raise map_error(exc) from exc

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, True, **kwargs)
        try:
            for delta in calls.stream(self._client(), request, role=self.role):
                chunk = _generation_chunk(delta)
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        except openai.APIError as exc:
            raise map_error(exc) from exc

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, True, **kwargs)
        try:
            async for delta in await calls.astream(
                self._client(async_client=True), request, role=self.role
            ):
                chunk = _generation_chunk(delta)
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        except openai.APIError as exc:
            raise map_error(exc) from exc

    # -- token counts (the served model's tokenizer, never a download) -----------------------

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the served model's tokenizer (the server's ``/tokenize``,
        else the model's tokenizer if it is on this machine, else an error at once)."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        try:
            return tokens.tokenize(self._client(), self.model, text=text)
        except openai.APIError as exc:
            raise map_error(exc) from exc

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """The prompt's token count as the server renders it (chat template and tools
        included): the ``usage.input_tokens`` the same call would report."""
        specs = [convert_to_openai_tool(t) for t in tools or []]
        try:
            ids = tokens.tokenize(
                self._client(),
                self.model,
                messages=convert_messages_to_dicts(messages),
                tools=specs or None,
            )
        except openai.APIError as exc:
            raise map_error(exc) from exc
        return len(ids)

    # -- tools and structured output ---------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; ``tool_choice`` takes "auto", "none", "any"/"required"/True, a tool's
        name, or an OpenAI dict."""
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        names = [t["function"]["name"] for t in formatted]
        choice = protocol.tool_choice_to_openai(tool_choice, names)
        if choice is not None:
            kwargs["tool_choice"] = choice
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | BaseModel]:
        """Structured output; ``json_schema`` (the default) is constrained on the server."""
        if kwargs:
            raise ValueError(f"unexpected arguments: {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        json_schema = convert_to_json_schema(schema)
        output_format = {"kwargs": {"method": method, "strict": strict}, "schema": json_schema}
        if method == "function_calling":
            tool = convert_to_openai_tool(schema, strict=strict)
            name = tool["function"]["name"]
            llm = self.bind_tools(
                [schema],
                tool_choice=name,
                strict=strict,
                parallel_tool_calls=False,
                ls_structured_output_format=output_format,
            )
            parser: Runnable = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema":
                schema_dict = {k: v for k, v in json_schema.items() if k != "description"}
                name = json_schema.get("title") or "output"
                response_format = protocol.json_schema_format(schema_dict, name=name, strict=strict)
            else:
                response_format = {"type": "json_object"}
            llm = self.bind(
                response_format=response_format, ls_structured_output_format=output_format
            )
            parser = (
                PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()
            )
        else:
            raise ValueError(
                f"method must be json_schema, function_calling or json_mode, got {method!r}"
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks(
            [fallback], exception_key="parsing_error"
        )


def _generation_chunk(delta: protocol.Delta) -> ChatGenerationChunk:
    info: dict[str, Any] = {}
    if delta.finish_reason:
        info["finish_reason"] = delta.finish_reason
    if "logprobs" in delta.metadata:
        info["logprobs"] = delta.metadata["logprobs"]
    return ChatGenerationChunk(message=delta_to_chunk(delta), generation_info=info or None)
