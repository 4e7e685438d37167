"""Generation on CPU with transformers: continuous batching over one shared KV cache.

Requests queue into a single engine thread. Each new request is prefilled on its own, then its
cache rows join the running batch (left-padded to a common length); every decode step runs one
forward pass for all running sequences, and finished sequences leave the batch at once. Per-row
sampling covers the OpenAI and vLLM parameters; logprobs are the model's raw log-softmax (as
vLLM returns by default), so they are the behaviour policy the RL trainer compares against.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from wandb_serverless.local.grammar import Constraint

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The engine's queue is full: the server answers 429 with Retry-After."""


class SamplingError(ValueError):
    """A row's parameters left nothing to sample: that row ends with an error, no other."""


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


@dataclass
class TokenEvent:
    """One sampled token and the text it released (held back near a possible stop string)."""

    token_id: int
    text: str
    logprob: float
    top_logprobs: list[tuple[int, float]]


@dataclass
class DoneEvent:
    finish_reason: str  # stop | length | abort | error
    stop_reason: str | int | None = None
    text: str = ""  # text released at the end (what was held back)
    error: str | None = None
    client_error: bool = False  # the request's own parameters caused the error (a 400)


Sink = Callable[[TokenEvent | DoneEvent], None]
MIN_SHARED_PREFIX = 16  # shorter shared prefixes are not worth a cache copy


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
    constraint: Constraint | None = None
    adapter: str | None = None  # a LoRA checkpoint's name; None is the base model
    adapter_path: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    cached_tokens: int = 0  # prompt tokens whose KV came from the prompt cache


class Detokenizer:
    """Incremental text with stop strings: holds back text that may still become a stop string
    or an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Any, stop: list[str], include_stop: bool) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.include_stop = include_stop
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.released = 0
        self.text = ""

    def add(self, token_id: int) -> tuple[str, str | None]:
        """Append a token; returns the newly released text and the stop string hit, if any."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.stop:
            start = max(0, self.released - self.hold)
            hits = [(i, s) for s in self.stop if (i := self.text.find(s, start)) >= 0]
            if hits:
                index, stop = min(hits)
                end = index + len(stop) if self.include_stop else index
                out = self.text[self.released : end]
                self.released = max(self.released, end)
                return out, stop
        end = len(self.text) - self.hold
        if self.text.endswith("\ufffd"):
            end = min(end, len(self.text) - 1)
        if end <= self.released:
            return "", None
        out, self.released = self.text[self.released : end], end
        return out, None

    def flush(self) -> str:
        text = self.text.rstrip("\ufffd")
        out, self.released = text[self.released :], max(self.released, len(text))
        return out


class Sequence:
    """A running generation: its sampling state, its text, and where it sits in the batch."""

    def __init__(self, request: GenerationRequest, engine: Engine) -> None:
        self.request = request
        self.params = request.params
        self.engine = engine
        self.generated: list[int] = []
        self.detok = Detokenizer(
            engine.tokenizer, self.params.stop, self.params.include_stop_str_in_output
        )
        seed = self.params.seed if self.params.seed is not None else random.getrandbits(62)
        self.generator = torch.Generator().manual_seed(seed % 2**64)
        self.seen = torch.tensor(sorted(set(request.prompt_ids)), dtype=torch.long)
        self.counts: dict[int, int] = {}
        self.done = False

    # -- logits processing -------------------------------------------------------------------

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), dtype=torch.long)
            logits[ids] += torch.tensor(list(p.logit_bias.values()), dtype=logits.dtype)
        if p.ignore_eos or len(self.generated) < p.min_tokens:
            banned = self.engine.eos_ids
            if len(self.generated) < p.min_tokens and p.stop_token_ids:
                banned = torch.cat([banned, torch.tensor(p.stop_token_ids, dtype=torch.long)])
            if self.request.constraint is None or self.request.constraint.allows_other_than(banned):
                logits[banned] = float("-inf")
            # else: the output constraint is complete; it ends the output despite ignore_eos
        if p.repetition_penalty != 1.0:
            seen = torch.cat([self.seen, torch.tensor(self.generated, dtype=torch.long)]).unique()
            scores = logits[seen]
            logits[seen] = torch.where(
                scores > 0, scores / p.repetition_penalty, scores * p.repetition_penalty
            )
        if (p.presence_penalty or p.frequency_penalty) and self.counts:
            ids = torch.tensor(list(self.counts), dtype=torch.long)
            counts = torch.tensor(list(self.counts.values()), dtype=logits.dtype)
            logits[ids] -= p.presence_penalty + p.frequency_penalty * counts
        if self.request.constraint is not None:
            logits = self.request.constraint.apply(logits)
        if not bool(torch.isfinite(logits).any()):
            raise SamplingError("no token is allowed by this request's sampling parameters")
        return logits

    def sample(self, logits: torch.Tensor) -> int:
        p = self.params
        if p.temperature <= 1e-5:
            return int(torch.argmax(logits))
        logits = logits / p.temperature
        if p.top_k and p.top_k > 0 and p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            drop = cumulative - sorted_probs > p.top_p
            sorted_probs[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    # -- one step ----------------------------------------------------------------------------

    def step(self, logits: torch.Tensor, context_left: int) -> int:
        """Sample from this row's logits, emit the token, and decide whether it is finished."""
        raw = torch.log_softmax(logits, dim=-1)
        token = self.sample(self.process(logits.clone()))
        if self.request.constraint is not None and not self.request.constraint.done:
            self.request.constraint.consume(token)
        self.generated.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1
        top: list[tuple[int, float]] = []
        if self.params.top_logprobs:
            values, ids = torch.topk(raw, self.params.top_logprobs)
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        constraint = self.request.constraint
        ended = constraint is not None and constraint.done  # a complete output ends here
        is_eos = token in self.engine.eos_set and (not self.params.ignore_eos or ended)
        text, stop = ("", None) if is_eos else self.detok.add(token)
        self.request.sink(TokenEvent(token, text, float(raw[token]), top))
        if is_eos:
            self.finish("stop")
        elif token in self.params.stop_token_ids:
            self.finish("stop", token)
        elif stop is not None:
            self.finish("stop", stop, flush=False)
        elif len(self.generated) >= self.params.max_tokens or context_left <= 0:
            self.finish("length")
        return token

    def fail(self, exc: Exception) -> None:
        if not self.done:
            self.done = True
            self.request.sink(error_event(exc))

    def finish(self, reason: str, stop_reason: str | int | None = None, flush: bool = True) -> None:
        if self.done:
            return
        self.done = True
        rest = self.detok.flush() if flush and reason != "abort" else ""
        self.request.sink(DoneEvent(reason, stop_reason, rest))


class Batch:
    """The running sequences and their shared, left-padded KV cache."""

    def __init__(self) -> None:
        self.rows: list[Sequence] = []
        self.cache: Any = None
        self.mask: torch.Tensor = torch.zeros(0, 0, dtype=torch.long)
        self.positions: torch.Tensor = torch.zeros(0, dtype=torch.long)
        self.last: list[int] = []

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def join(self, row: Sequence, cache: Any, prompt_len: int, first_token: int) -> None:
        mask = torch.ones(1, prompt_len, dtype=torch.long)
        if self.cache is None:
            self.cache = cache
            self.mask = mask
        else:
            target = max(self.length, prompt_len)
            for old, new in zip(self.cache.layers, cache.layers, strict=True):
                old.keys = torch.cat([_left_pad(old.keys, target), _left_pad(new.keys, target)])
                old.values = torch.cat(
                    [_left_pad(old.values, target), _left_pad(new.values, target)]
                )
            self.mask = torch.cat([_left_pad_2d(self.mask, target), _left_pad_2d(mask, target)])
        self.positions = torch.cat([self.positions, torch.tensor([prompt_len])])
        self.rows.append(row)
        self.last.append(first_token)

    def keep(self, indices: list[int]) -> None:
        if not indices:
            self.__init__()  # type: ignore[misc]
            return
        index = torch.tensor(indices, dtype=torch.long)
        self.mask = self.mask[index]
        self.positions = self.positions[index]
        self.rows = [self.rows[i] for i in indices]
        self.last = [self.last[i] for i in indices]
        used = (self.mask.sum(0) > 0).nonzero()
        first = int(used[0]) if used.numel() else 0
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.mask = self.mask[:, first:]


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(tensor, (0, 0, length - tensor.shape[2], 0))


def _left_pad_2d(tensor: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(tensor, (length - tensor.shape[1], 0))


class Engine:
    """Owns the model; one background thread runs every forward pass."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 16,
        max_queue: int = 256,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.vocab_size = int(model.config.vocab_size)
        eos = model.generation_config.eos_token_id
        eos_ids = {tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos])
        self.eos_set = {int(i) for i in eos_ids if i is not None}
        self.eos_ids = torch.tensor(sorted(self.eos_set), dtype=torch.long)
        self._pending: queue.Queue[GenerationRequest] = queue.Queue()
        self._batch = Batch()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="wandb-serverless-engine", daemon=True
        )
        self.steps = 0
        self.adapters: set[str] = set()
        self._stale: set[str] = set()
        self._prompts: OrderedDict[tuple, tuple[list, torch.Tensor]] = OrderedDict()
        self.prompt_cache_size = 16
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread.start()

    # -- public ------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        if self._pending.qsize() >= self.max_queue:
            raise QueueFullError(f"engine queue is full ({self.max_queue} waiting requests)")
        self._pending.put(request)

    @property
    def load(self) -> dict[str, int]:
        return {"running": len(self._batch.rows), "waiting": self._pending.qsize()}

    def drop_adapter(self, name: str) -> None:
        """Unload a checkpoint's adapter (on the engine thread, between steps)."""
        self._commands.put(lambda: self._unload(name))

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            try:
                while not self._commands.empty():
                    self._commands.get_nowait()()
                self._admit()
                if self._batch.rows:
                    self._decode()
            except Exception as exc:  # a broken step fails its rows, never the engine
                log.exception("engine step failed")
                for row in self._batch.rows:
                    row.request.sink(DoneEvent("error", error=f"{type(exc).__name__}: {exc}"))
                self._batch = Batch()

    def _admit(self) -> None:
        while len(self._batch.rows) < self.max_batch_size:
            try:
                timeout = None if self._batch.rows else 0.05
                request = (
                    self._pending.get_nowait()
                    if self._batch.rows
                    else self._pending.get(timeout=timeout)
                )
            except queue.Empty:
                return
            if request.cancelled.is_set():
                request.sink(DoneEvent("abort"))
                continue
            try:
                self._prefill(request)
            except Exception as exc:
                if not isinstance(exc, SamplingError):
                    log.exception("prefill failed")
                request.sink(error_event(exc))

    def _load(self, name: str, path: str) -> None:
        """Load a LoRA adapter beside the others; rows pick theirs per forward pass."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(path, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        self.model.eval()
        self.adapters.add(name)
        for stale in list(self._stale):
            self._stale.discard(stale)
            self.model.delete_adapter(stale)

    def _unload(self, name: str) -> None:
        if name not in self.adapters:
            return
        self.adapters.discard(name)
        for key in [k for k in self._prompts if k[0] == name]:
            del self._prompts[key]
        # Deleting peft's only adapter leaves stale references that break every later forward
        # pass, so the last one stays loaded (unused) until another adapter replaces it.
        if len(self.model.peft_config) > 1:
            self.model.delete_adapter(name)
        else:
            self._stale.add(name)

    def _forward_kwargs(self, adapters: list[str | None]) -> dict[str, Any]:
        """Pick the adapter(s) for a forward pass. One adapter for the whole batch (the usual
        case) runs peft's plain path; mixed batches use its slower per-row path."""
        if not self.adapters and not self._stale:
            return {}
        names = {a if a in self.adapters else "__base__" for a in adapters}
        if len(names) == 1 and "__base__" not in names:
            (name,) = names
            if self.model.active_adapter != name:
                self.model.set_adapter(name)
            return {}
        return {"adapter_names": [a if a in self.adapters else "__base__" for a in adapters]}

    def _prefill(self, request: GenerationRequest) -> None:
        from transformers import DynamicCache

        if request.adapter and request.adapter not in self.adapters:
            if not request.adapter_path:
                raise ValueError(f"adapter {request.adapter} has no path")
            self._load(request.adapter, request.adapter_path)

        length = len(request.prompt_ids)
        key = (request.adapter, tuple(request.prompt_ids))
        hit = self._prompts.get(key)
        if hit is not None:  # a group's rollouts share their prompt: its KV is computed once
            self._prompts.move_to_end(key)
            layers, logits = hit
            cache = DynamicCache()
            for index, (keys, values) in enumerate(layers):
                cache.update(keys, values, index)
            request.cached_tokens = length
        else:
            # An agent's prompts share long prefixes (system prompt and tools; the previous
            # turns of a multi-turn run): reuse the longest cached one, compute the rest.
            start, cache = self._cached_prefix(request.adapter, request.prompt_ids)
            request.cached_tokens = start
            ids = torch.tensor([request.prompt_ids[start:]], dtype=torch.long)
            out = self.model(
                input_ids=ids,
                attention_mask=torch.ones(1, length, dtype=torch.long),
                position_ids=torch.arange(start, length)[None],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                **self._forward_kwargs([request.adapter]),
            )
            cache, logits = out.past_key_values, out.logits[0, -1].float()
            # Decoding never writes into these tensors (it concatenates), so they can be shared.
            self._prompts[key] = ([(layer.keys, layer.values) for layer in cache.layers], logits)
            if len(self._prompts) > self.prompt_cache_size:
                self._prompts.popitem(last=False)
        row = Sequence(request, self)
        token = row.step(logits.clone(), self.context_length - length - 1)
        if not row.done:
            self._batch.join(row, cache, length, token)

    def _cached_prefix(self, adapter: str | None, prompt: list[int]) -> tuple[int, Any]:
        """(n, a KV cache of the prompt's first n tokens) from the prompt cache: the longest
        shared prefix worth reusing, at most all but the last token (its logits are needed)."""
        from transformers import DynamicCache

        best, layers = 0, None
        for (name, cached), (cached_layers, _) in self._prompts.items():
            if name != adapter:
                continue
            limit = min(len(cached), len(prompt) - 1)
            n = 0
            while n < limit and cached[n] == prompt[n]:
                n += 1
            if n > best:
                best, layers = n, cached_layers
        cache = DynamicCache()
        if layers is None or best < MIN_SHARED_PREFIX:
            return 0, cache
        for index, (keys, values) in enumerate(layers):
            cache.update(keys[:, :, :best], values[:, :, :best], index)
        return best, cache

    def _decode(self) -> None:
        batch = self._batch
        for row in batch.rows:
            if row.request.cancelled.is_set():
                row.finish("abort")
        alive = [i for i, row in enumerate(batch.rows) if not row.done]
        if len(alive) < len(batch.rows):
            batch.keep(alive)
            if not batch.rows:
                return
        length = batch.length
        batch.mask = torch.cat([batch.mask, torch.ones(len(batch.rows), 1, dtype=torch.long)], 1)
        out = self.model(
            input_ids=torch.tensor(batch.last, dtype=torch.long)[:, None],
            attention_mask=batch.mask,
            position_ids=batch.positions[:, None],
            past_key_values=batch.cache,
            cache_position=torch.tensor([length]),
            use_cache=True,
            **self._forward_kwargs([row.request.adapter for row in batch.rows]),
        )
        self.steps += 1
        batch.positions = batch.positions + 1
        logits = out.logits[:, -1].float()
        for i, row in enumerate(batch.rows):
            context_left = self.context_length - int(batch.positions[i]) - 1
            try:
                batch.last[i] = row.step(logits[i], context_left)
            except Exception as exc:  # one row's failure ends that row, never its neighbours
                if not isinstance(exc, SamplingError):
                    log.exception("sampling failed for one row")
                row.fail(exc)
        alive = [i for i, row in enumerate(batch.rows) if not row.done]
        if len(alive) < len(batch.rows):
            batch.keep(alive)


def wait_idle(engine: Engine, timeout: float = 10.0) -> bool:
    """Block until nothing runs or waits (for tests and shutdown)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        load = engine.load
        if not load["running"] and not load["waiting"]:
            return True
        time.sleep(0.01)
    return False
