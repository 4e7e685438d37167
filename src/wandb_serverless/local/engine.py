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
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from wandb_serverless.local.engine_api import (
    DoneEvent,
    GenerationRequest,
    OutputConstraint,
    PromptEvent,
    QueueFullError,
    SamplingError,
    SamplingParams,
    TokenEvent,
    error_event,
)
from wandb_serverless.local.grammar import Constraint, Vocabulary
from wandb_serverless.local.sampling import EOS, Detokenizer, Sequence

__all__ = [
    "Detokenizer",
    "DoneEvent",
    "Engine",
    "GenerationRequest",
    "QueueFullError",
    "SamplingParams",
    "TokenEvent",
    "wait_idle",
]

log = logging.getLogger(__name__)


MIN_SHARED_PREFIX = 16  # shorter shared prefixes are not worth a cache copy
PROMPT_CHUNK = 256  # prompt positions scored per forward pass (prompt_logprobs)


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
        max_loaded_adapters: int = 8,
    ) -> None:
        if max_loaded_adapters < 1:
            raise ValueError(f"max_loaded_adapters must be >= 1, not {max_loaded_adapters}")
        self.model = model
        self.max_loaded_adapters = max_loaded_adapters
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.vocab_size = int(model.config.vocab_size)
        eos = model.generation_config.eos_token_id
        eos_ids = {tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos])
        self.eos = EOS.of({int(i) for i in eos_ids if i is not None})
        self.vocab = Vocabulary(tokenizer, self.vocab_size)  # llguidance's view (~0.4 s)
        self._pending: queue.Queue[GenerationRequest] = queue.Queue()
        self._batch = Batch()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="wandb-serverless-engine", daemon=True
        )
        self.steps = 0
        # loaded LoRA adapters, least recently used first: beyond max_loaded_adapters the
        # oldest idle one is unloaded (its files stay on disk; a request for it loads it again)
        self.adapters: OrderedDict[str, None] = OrderedDict()
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

    def compile_constraint(self, constraint: OutputConstraint) -> Constraint:
        """Compile the matcher once, off the engine thread (a fault in it is a 400 now, and a
        large grammar never stalls the batch); each sequence starts from a copy of it."""
        return self.vocab.constraint(constraint)

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

        self._evict_idle()
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(path, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        self.model.eval()
        self.adapters[name] = None
        for stale in list(self._stale):
            self._stale.discard(stale)
            self.model.delete_adapter(stale)

    def _evict_idle(self) -> None:
        """Make room for one more adapter: unload the least recently used ones that no
        running sequence uses (if every one is in use, the bound waits for them to finish)."""
        busy = {row.request.adapter for row in self._batch.rows}
        for name in list(self.adapters):
            if len(self.adapters) < self.max_loaded_adapters:
                return
            if name not in busy:
                self._unload(name)

    def _unload(self, name: str) -> None:
        if name not in self.adapters:
            return
        del self.adapters[name]
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
        elif request.adapter:
            self.adapters.move_to_end(request.adapter)  # recently used: evicted last

        length = len(request.prompt_ids)
        key = (request.adapter, tuple(request.prompt_ids))
        hit = self._prompts.get(key)
        if request.params.prompt_logprobs is not None:
            cache, logits = self._prefill_scored(request)
        elif hit is not None:  # a group's rollouts share their prompt: its KV is computed once
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
        constraint = None
        if request.compiled is not None:
            constraint = request.compiled.copy()
        elif request.constraint is not None:
            constraint = self.vocab.constraint(request.constraint)
        row = Sequence(request, self.tokenizer, self.eos, constraint)
        token = row.step(logits.clone(), self.context_length - length - 1)
        if not row.done:
            self._batch.join(row, cache, length, token)

    def _prefill_scored(self, request: GenerationRequest) -> tuple[Any, torch.Tensor]:
        """Prefill that scores the prompt (``prompt_logprobs``): every position's logits, in
        chunks so that a long prompt never holds (length x vocabulary) floats at once; the
        prompt cache is not used (it has no logits for the positions it saved)."""
        from transformers import DynamicCache

        ids, k = request.prompt_ids, request.params.prompt_logprobs or 0
        cache: Any = DynamicCache()
        scored: list[tuple[tuple[int, float, int], list[tuple[int, float]]]] = []
        logits = torch.zeros(0)
        for start in range(0, len(ids), PROMPT_CHUNK):
            end = min(start + PROMPT_CHUNK, len(ids))
            out = self.model(
                input_ids=torch.tensor([ids[start:end]], dtype=torch.long),
                attention_mask=torch.ones(1, end, dtype=torch.long),
                position_ids=torch.arange(start, end)[None],
                past_key_values=cache,
                use_cache=True,
                **self._forward_kwargs([request.adapter]),
            )
            cache, logits = out.past_key_values, out.logits[0].float()
            targets = torch.tensor(ids[start + 1 : end + 1], dtype=torch.long)
            rows = torch.log_softmax(logits[: len(targets)], dim=-1)
            chosen = rows.gather(1, targets[:, None])[:, 0]
            ranks = (rows > chosen[:, None]).sum(1) + 1
            top_values, top_ids = torch.topk(rows, k) if k else (rows[:, :0], rows[:, :0].long())
            for i, token in enumerate(targets.tolist()):
                top = list(zip(top_ids[i].tolist(), top_values[i].tolist(), strict=True))
                scored.append(((token, float(chosen[i]), int(ranks[i])), top))
            logits = logits[-1]
        request.sink(PromptEvent(scored))
        return cache, logits

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
