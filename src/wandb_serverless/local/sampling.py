"""One sequence's sampling: the logits processors of the OpenAI and vLLM parameters, the
sampler, stop conditions, and incremental detokenizing with stop strings."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from wandb_serverless.local.engine_api import (
    DoneEvent,
    GenerationRequest,
    SamplingError,
    TokenEvent,
    error_event,
)
from wandb_serverless.local.grammar import Constraint


@dataclass(frozen=True)
class EOS:
    """The model's end-of-sequence token ids, as a set and as a tensor."""

    tokens: frozenset[int]
    ids: torch.Tensor

    @classmethod
    def of(cls, ids: set[int]) -> EOS:
        return cls(frozenset(ids), torch.tensor(sorted(ids), dtype=torch.long))


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

    def __init__(
        self,
        request: GenerationRequest,
        tokenizer: Any,
        eos: EOS,
        constraint: Constraint | None = None,
    ) -> None:
        self.request = request
        self.params = request.params
        self.eos = eos
        self.constraint = constraint
        self.generated: list[int] = []
        self.detok = Detokenizer(
            tokenizer, self.params.stop, self.params.include_stop_str_in_output
        )
        seed = self.params.seed if self.params.seed is not None else random.getrandbits(62)
        self.generator = torch.Generator().manual_seed(seed % 2**64)
        self.seen = torch.tensor(sorted(set(request.prompt_ids)), dtype=torch.long)
        self.counts: dict[int, int] = {}
        self.done = False
        allowed = self.params.allowed_token_ids
        self.allowed = None if allowed is None else torch.tensor(allowed, dtype=torch.long)

    # -- logits processing -------------------------------------------------------------------

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        if self.allowed is not None:
            kept = logits[self.allowed]
            logits.fill_(float("-inf"))
            logits[self.allowed] = kept
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), dtype=torch.long)
            logits[ids] += torch.tensor(list(p.logit_bias.values()), dtype=logits.dtype)
        for word in p.bad_words:  # its last token, wherever the ones before it were just made
            if len(word) == 1 or self.generated[-(len(word) - 1) :] == word[:-1]:
                logits[word[-1]] = float("-inf")
        if p.ignore_eos or len(self.generated) < p.min_tokens:
            banned = self.eos.ids
            if len(self.generated) < p.min_tokens and p.stop_token_ids:
                banned = torch.cat([banned, torch.tensor(p.stop_token_ids, dtype=torch.long)])
            if self.constraint is None or self.constraint.allows_other_than(banned):
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
        if self.constraint is not None:
            logits = self.constraint.apply(logits)
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
        if self.constraint is not None and not self.constraint.done:
            self.constraint.consume(token)
        self.generated.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1
        top: list[tuple[int, float]] = []
        if self.params.top_logprobs:
            values, ids = torch.topk(raw, self.params.top_logprobs)
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        ended = self.constraint is not None and self.constraint.done  # a complete output ends here
        is_eos = token in self.eos.tokens and (not self.params.ignore_eos or ended)
        text, stop = ("", None) if is_eos else self.detok.add(token)
        end: tuple[str, str | int | None, bool] | None = None
        if is_eos:
            end = ("stop", None, True)
        elif token in self.params.stop_token_ids:
            end = ("stop", token, True)
        elif stop is not None:
            end = ("stop", stop, False)
        elif len(self.generated) >= self.params.max_tokens or context_left <= 0:
            end = ("length", None, True)
        self.request.sink(TokenEvent(token, text, float(raw[token]), top, last=end is not None))
        if end is not None:
            self.finish(*end)
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
