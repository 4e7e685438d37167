"""The RL loss's log-probabilities when samples share a prefix: packed batches (the prefix run
once, its KV cache shared) give the same values and gradients as one sequence at a time."""

from __future__ import annotations

import random

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from wandb_serverless.local.trainer import (
    LORA,
    Sample,
    batch_logprobs,
    prefix_batches,
    shared_prefix_logprobs,
)


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(task_type="CAUSAL_LM", **LORA))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero adapters, so their gradients are not all equal
            torch.nn.init.normal_(param, std=0.1)
    return model.eval()


def two_turn_groups(rng: random.Random) -> list[Sample]:
    """Samples shaped like a two-turn agent's: a shared system prompt, a user turn per group,
    then either the first model turn, or the second after a tool result of its own."""
    system = [rng.randrange(1, 97) for _ in range(40)]
    samples = []
    for _ in range(3):
        user = system + [rng.randrange(1, 97) for _ in range(8)]
        for _ in range(4):
            call = [rng.randrange(1, 97) for _ in range(rng.randint(3, 9))]
            samples.append(Sample(user + call, len(user), rng.uniform(-1, 1)))
            context = user + call + [rng.randrange(1, 97) for _ in range(rng.randint(4, 12))]
            answer = [rng.randrange(1, 97) for _ in range(rng.randint(2, 7))]
            samples.append(Sample(context + answer, len(context), rng.uniform(-1, 1)))
    return samples


def loss_and_grads(model, values: list[torch.Tensor], samples: list[Sample]):
    model.zero_grad()
    loss = sum(-(v * s.advantage).sum() for v, s in zip(values, samples, strict=True))
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_prefix_batches_share_the_system_prompt_and_stop_before_each_completion():
    samples = two_turn_groups(random.Random(1))
    batches = prefix_batches(samples)
    assert sorted(id(s) for _, b in batches for s in b) == sorted(id(s) for s in samples)
    assert len(batches) == 1  # 24 samples, 40 shared tokens, well under the token budget
    prefix, batch = batches[0]
    assert prefix == 40
    assert all(s.ids[:prefix] == batch[0].ids[:prefix] and prefix < s.start for s in batch)
    small = prefix_batches(samples, max_tokens=200)
    assert len(small) > 1
    assert all(len(b) * (max(len(s.ids) for s in b) - p) <= 200 for p, b in small if len(b) > 1)


def test_a_prefix_that_differs_early_starts_a_new_batch():
    shared, other = [1] * 30, [2] * 30
    samples = [Sample([*shared, 5, 6, 7], 31), Sample([*shared, 5, 8], 31), Sample([*other, 5], 30)]
    batches = prefix_batches(samples)
    assert [(p, len(b)) for p, b in batches] == [(30, 2), (29, 1)]


def test_shared_prefix_logprobs_and_gradients_equal_one_sequence_at_a_time(policy):
    samples = two_turn_groups(random.Random(2))
    one_by_one = [batch_logprobs(policy, [s])[0] for s in samples]
    loss_one, grads_one = loss_and_grads(policy, one_by_one, samples)

    packed, order = [], []
    for prefix, batch in prefix_batches(samples, max_tokens=300):
        packed += shared_prefix_logprobs(policy, batch, prefix)
        order += batch
    by_sample = {id(s): v for s, v in zip(order, packed, strict=True)}
    values = [by_sample[id(s)] for s in samples]
    loss_packed, grads_packed = loss_and_grads(policy, values, samples)

    for single, shared in zip(one_by_one, values, strict=True):
        torch.testing.assert_close(shared, single, atol=1e-5, rtol=1e-4)
    assert loss_packed == pytest.approx(loss_one, rel=1e-5)
    assert any(g.abs().sum() > 0 for g in grads_one)
    for single, shared in zip(grads_one, grads_packed, strict=True):
        torch.testing.assert_close(shared, single, atol=1e-5, rtol=1e-3)
