"""One RL step of the local trainer vs a plain peft training loop on the same batch.

Batch: 4 groups x 4 trajectories, ~200-token prompts, 48-token completions (random tokens: the
arithmetic is what is timed). Target (issue 4): ours / raw <= 1.2.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from wandb_serverless.local.trainer import LORA, Sample, TrainingWorker, _adamw

BASE = (
    Path(__file__).resolve().parents[1]
    / ".cache"
    / "models"
    / "HuggingFaceTB--SmolLM2-135M-Instruct"
)


def batch(seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    samples = []
    for _ in range(4):
        prompt = [rng.randrange(100, 40000) for _ in range(200)]
        for advantage in (1.0, -1.0, 0.5, -0.5):
            completion = [rng.randrange(100, 40000) for _ in range(48)]
            samples.append(Sample(prompt + completion, len(prompt), advantage, [-2.0] * 48))
    return samples


def model():
    base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    return get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **LORA))


def raw_step(policy, samples: list[Sample]) -> None:
    """What one would write by hand: a forward per sequence, clipped policy loss, one step."""
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=5e-4)
    total = sum(len(s.ids) - s.start for s in samples)
    for s in samples:
        ids = torch.tensor([s.ids])
        logits = policy(input_ids=ids).logits[0, s.start - 1 : -1]
        new = torch.log_softmax(logits, -1).gather(1, ids[0, s.start :, None])[:, 0]
        ratio = torch.exp(new - torch.tensor(s.old_logprobs))
        loss = -torch.minimum(ratio * s.advantage, torch.clamp(ratio, 0.8, 1.2) * s.advantage).sum()
        (loss / total).backward()
    torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], 1.0)
    optimizer.step()


def run() -> dict[str, float]:
    samples = batch()
    ours_model, raw_model = model(), model()
    TrainingWorker._rl_step(ours_model, _adamw(ours_model, 5e-4), samples, {})  # warm up
    raw_step(raw_model, samples)
    ours, raw = [], []
    for _ in range(3):  # interleaved
        started = time.perf_counter()
        TrainingWorker._rl_step(ours_model, _adamw(ours_model, 5e-4), samples, {})
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        raw_step(raw_model, samples)
        raw.append(time.perf_counter() - started)
    return {
        "rl_step_s": statistics.median(ours),
        "raw_peft_step_s": statistics.median(raw),
        "rl_step_vs_raw_peft": statistics.median(ours) / statistics.median(raw),
    }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:24s} {value:8.3f}")
