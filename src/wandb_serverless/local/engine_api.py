"""What any engine behind the local server takes and gives: requests (prompt ids, sampling
parameters, an output constraint as a specification, a LoRA adapter), token and done events,
and the ``EngineClient`` interface the serving layer uses. The local transformers engine
(``engine.py``) implements it; a vLLM engine would too (``OutputConstraint`` holds the fields
of vLLM's ``StructuredOutputsParams``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


class QueueFullError(RuntimeError):
    """The engine's queue is full: the server answers 429 with Retry-After."""


class SamplingError(ValueError):
    """A row's parameters left nothing to sample: that row ends with an error, no other."""


@dataclass(frozen=True)
class OutputConstraint:
    """What the output must match, as one field of vLLM's ``StructuredOutputsParams`` (a vLLM
    engine passes ``StructuredOutputsParams(**{kind: value})``): ``json`` a JSON schema,
    ``json_object`` True, ``regex`` a pattern, ``choice`` a list of strings, ``grammar`` a Lark
    grammar in llguidance's dialect (``%json`` included; vLLM's ``guidance`` backend takes it)
    or GBNF. Each engine compiles it its own way (the local one: ``grammar.compile_constraint``).
    """

    kind: Literal["json", "json_object", "regex", "choice", "grammar"]
    value: Any = True


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    min_tokens: int = 0
    ignore_eos: bool = False
    top_logprobs: int = 0
    #: each prompt token's logprob and the top k at its position (0: the token's only)
    prompt_logprobs: int | None = None
    #: token sequences never completed: the last token is banned after the others
    bad_words: list[list[int]] = field(default_factory=list)
    #: the only tokens that may be sampled (None: any)
    allowed_token_ids: list[int] | None = None


@dataclass
class TokenEvent:
    """One sampled token and the text it released (held back near a possible stop string);
    ``last``: a ``DoneEvent`` follows at once (a stream puts the finish reason on this token's
    chunk, as vLLM does)."""

    token_id: int
    text: str
    logprob: float
    top_logprobs: list[tuple[int, float]]
    last: bool = False


@dataclass
class PromptEvent:
    """The prompt's logprobs, sent before the first token when ``prompt_logprobs`` is asked:
    per prompt position from the second, ``(token id, logprob, rank)`` of the prompt's token
    and the top k as ``(token id, logprob)``."""

    logprobs: list[tuple[tuple[int, float, int], list[tuple[int, float]]]]


@dataclass
class DoneEvent:
    finish_reason: str  # stop | length | abort | error
    stop_reason: str | int | None = None
    text: str = ""  # text released at the end (what was held back)
    error: str | None = None
    client_error: bool = False  # the request's own parameters caused the error (a 400)


Sink = Callable[[TokenEvent | DoneEvent | PromptEvent], None]


def error_event(exc: Exception) -> DoneEvent:
    """How a failed row ends: the request's own fault (a 400) or the server's."""
    if isinstance(exc, SamplingError):
        return DoneEvent("error", error=str(exc), client_error=True)
    return DoneEvent("error", error=f"{type(exc).__name__}: {exc}")


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    constraint: OutputConstraint | None = None
    compiled: Any = None  # what ``EngineClient.compile_constraint`` made of it (engine-private)
    adapter: str | None = None  # a LoRA checkpoint's name; None is the base model
    adapter_path: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    cached_tokens: int = 0  # prompt tokens whose KV came from the prompt cache


class EngineClient(Protocol):
    """The engine as the serving layer sees it."""

    context_length: int
    vocab_size: int

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; its events go to ``request.sink`` (``QueueFullError`` if full)."""

    def compile_constraint(self, constraint: OutputConstraint) -> Any:
        """Compile the constraint (off the engine's thread; ``GrammarError`` if it cannot
        constrain this model's output); the result goes into the request's ``compiled``."""

    def drop_adapter(self, name: str) -> None:
        """Forget a LoRA adapter (its checkpoint was deleted)."""

    @property
    def load(self) -> dict[str, int]:
        """``{"running": n, "waiting": m}``."""

    def alive(self) -> bool: ...

    def close(self) -> None: ...
