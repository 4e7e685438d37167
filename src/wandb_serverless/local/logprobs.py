"""The RL learner's forward pass: each sample's completion-token logprobs, batched, with
shared token prefixes run once (``prefix_batches`` packs them; rl_probe.md's recipe)."""

from __future__ import annotations

from typing import Any

import torch

from wandb_serverless.local.rl_data import Sample


def batch_logprobs(model: Any, samples: list[Sample]) -> list[torch.Tensor]:
    """Log-probabilities of each sample's completion tokens, for a right-padded batch.

    The decoder runs once for the batch; the (49k-wide) LM head is applied only at the
    positions that predict completion tokens, as in rl_probe.md's recipe.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    longest = max(len(s.ids) for s in samples)
    ids = torch.zeros(len(samples), longest, dtype=torch.long)
    mask = torch.zeros(len(samples), longest, dtype=torch.long)
    for row, sample in enumerate(samples):
        ids[row, : len(sample.ids)] = torch.tensor(sample.ids)
        mask[row, : len(sample.ids)] = 1
    hidden = inner.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return _completion_logprobs(inner, hidden, samples, 0)


def shared_prefix_logprobs(model: Any, samples: list[Sample], prefix: int) -> list[torch.Tensor]:
    """Like :func:`batch_logprobs` for samples whose first ``prefix`` tokens are the same (a
    GRPO group's prompt; the system prompt and tools of every turn of a multi-turn agent): the
    prefix runs once (gradients flow through its KV cache), the rest runs as one padded batch."""
    if prefix < 1:
        return batch_logprobs(model, samples)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = inner.model(input_ids=torch.tensor([samples[0].ids[:prefix]]), use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(samples))
    lengths = [len(s.ids) - 1 - prefix for s in samples]  # inputs after the prefix
    longest = max(lengths)
    inputs = torch.zeros(len(samples), longest, dtype=torch.long)
    mask = torch.zeros(len(samples), prefix + longest, dtype=torch.long)
    mask[:, :prefix] = 1
    for row, sample in enumerate(samples):
        inputs[row, : lengths[row]] = torch.tensor(sample.ids[prefix:-1])
        mask[row, prefix : prefix + lengths[row]] = 1
    positions = torch.arange(prefix, prefix + longest)[None].expand(len(samples), -1)
    hidden = inner.model(
        input_ids=inputs, attention_mask=mask, position_ids=positions, past_key_values=cache
    ).last_hidden_state
    return _completion_logprobs(inner, hidden, samples, prefix)


def _completion_logprobs(
    inner: Any, hidden: torch.Tensor, samples: list[Sample], offset: int
) -> list[torch.Tensor]:
    """Each sample's completion-token logprobs from hidden states whose column 0 is token
    ``offset``: the LM head only where a completion token is predicted."""
    rows = torch.cat([torch.full((len(s.ids) - s.start,), i) for i, s in enumerate(samples)])
    cols = torch.cat([torch.arange(s.start - 1 - offset, len(s.ids) - 1 - offset) for s in samples])
    targets = torch.cat([torch.tensor(s.ids[s.start :]) for s in samples])
    logits = inner.lm_head(hidden[rows, cols]).float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
    return list(logprobs.split([len(s.ids) - s.start for s in samples]))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def prefix_batches(samples: list[Sample], max_tokens: int = 4096) -> list[tuple[int, list[Sample]]]:
    """Samples packed into batches that share a token prefix, as ``(prefix length, batch)``.

    Sorted by their tokens, neighbours share the longest prefixes; a batch ends where the next
    sample would halve its prefix or take it over ``max_tokens`` padded tokens after the prefix.
    The prefix stops before every sample's first completion token, whose logprob needs the
    position before it.
    """
    ordered = sorted(samples, key=lambda s: s.ids)
    batches: list[tuple[int, list[Sample]]] = []
    prefix, batch = 0, list[Sample]()
    for sample in ordered:
        if batch:
            shared = min(prefix, _common_prefix(batch[0].ids, sample.ids), sample.start - 1)
            longest = max(len(s.ids) for s in (*batch, sample)) - shared
            if shared >= prefix // 2 and longest * (len(batch) + 1) <= max_tokens:
                prefix = shared
                batch.append(sample)
                continue
            batches.append((prefix, batch))
        prefix, batch = sample.start - 1, [sample]
    if batch:
        batches.append((prefix, batch))
    return batches
