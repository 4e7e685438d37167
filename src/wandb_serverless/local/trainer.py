"""Real LoRA training on CPU behind the training-job API: RL on trajectory groups and SFT on
``train.jsonl`` datasets, one job at a time, each producing the next checkpoint.

RL: group-relative advantages (reward - group mean, divided by the group's std unless
``scale_rewards``/``normalize_advantages`` is false); zero-variance groups are skipped and counted.
Each trainable model turn (a ``Choice`` with logprobs) is one sequence: the recorded
``prompt_token_ids + token_ids`` when present (no retokenisation drift), otherwise the chat
template. The loss is importance-weighted against the recorded logprobs: PPO's clipped objective
(``epsilon``/``epsilon_high``, default 0.2) or CISPO (``loss_fn="cispo"``), normalised by the
number of trainable tokens; one optimizer step per job. Honoured config fields: learning_rate,
epsilon, epsilon_high, loss_fn, ppo, scale_rewards, normalize_advantages,
allow_training_without_logprobs; the rest are accepted and ignored (documented in
docs/local-backend.md).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wandb_serverless.local.artifacts import (
    OPTIMIZER_FILE,
    TrainingError,
    read_rows,
    resolve_dataset,
    unreadable,
    write_checkpoint,
)
from wandb_serverless.local.logprobs import batch_logprobs, prefix_batches, shared_prefix_logprobs
from wandb_serverless.local.rl_data import Sample, Tokenization, rl_samples
from wandb_serverless.local.state import JobRow, State
from wandb_serverless.trajectory import TrajectoryGroup

__all__ = [
    "Sample",
    "Tokenization",
    "TrainingError",
    "TrainingWorker",
    "batch_logprobs",
    "prefix_batches",
    "rl_samples",
    "shared_prefix_logprobs",
]

log = logging.getLogger(__name__)
# peft reads transformers' deprecated `is_gradient_checkpointing` on every adapter save: noise
# in every training job's output, nothing a user can act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

DEFAULT_RL_LR = 5e-4  # LoRA on a 135M model (rl_probe.md); hosted W&B's defaults differ
DEFAULT_SFT_LR = 5e-4
DEFAULT_SFT_BATCH = 4
SFT_CONFIG_KEYS = {"batch_size", "learning_rate", "assistant_turns", "metric_logging"}
#: "1": a fresh AdamW per RL job, the recipe before optimizer state was kept (for comparisons)
RESET_OPTIMIZER = "WANDB_SERVERLESS_RESET_OPTIMIZER"
LORA: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
}


def _adamw(model: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0
    )


# -- the worker --------------------------------------------------------------------------------


class TrainingWorker:
    """Runs queued jobs one at a time on a background thread; the API never waits for it."""

    def __init__(
        self,
        state: State,
        base_path: Path,
        tokenizer: Any,
        on_checkpoint: Callable[[str, int], None] | None = None,
        *,
        sft_data_dir: Path | None = None,
        max_live_models: int = 2,
    ) -> None:
        if max_live_models < 0:
            raise ValueError(f"max_live_models must be >= 0, not {max_live_models}")
        self.state = state
        self.max_live_models = max_live_models
        self.sft_data_dir = sft_data_dir
        self.base_path = base_path
        self.tok = Tokenization(tokenizer)
        self.on_checkpoint = on_checkpoint
        self._wake = threading.Event()
        self._stop = threading.Event()
        # the last RL policy and its optimizer of the models trained most recently (at most
        # max_live_models: a full model copy each), keyed by the step they produced; the others
        # continue from the adapter and optimizer state on disk
        self._live: OrderedDict[str, tuple[int, Any, torch.optim.Optimizer]] = OrderedDict()
        self.state.fail_interrupted_jobs()
        self._thread = threading.Thread(
            target=self._run, name="wandb-serverless-trainer", daemon=True
        )
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self.state.next_queued_job()
            if job is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._execute(job)

    def _execute(self, job: JobRow) -> None:
        self.state.set_job_status(job.id, "running")
        try:
            step = (self._rl if job.kind == "rl" else self._sft)(job)
        except Exception as exc:
            if not isinstance(exc, TrainingError):
                log.exception("training job %s failed", job.id)
            message = str(exc) if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
            self.state.add_event(job.id, "training_failed", {"error_message": message})
            self.state.set_job_status(job.id, "failed")
            return
        self.state.add_event(job.id, "training_ended", {"step": step})
        self.state.set_job_status(job.id, "succeeded")

    # -- the policy --------------------------------------------------------------------------

    def _policy(self, model_id: str) -> Any:
        """The base model with LoRA: the latest checkpoint's adapter, or a fresh one."""
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=torch.float32)
        latest = self.state.checkpoint(model_id, None)
        if latest is not None:
            model = PeftModel.from_pretrained(base, latest.path, is_trainable=True)
        else:
            model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **LORA))
        model.eval()  # no dropout: the learner is the sampler
        return model

    def _rl_policy(self, model_id: str, lr: float) -> tuple[Any, torch.optim.Optimizer]:
        """The policy and its AdamW, continuing from the latest checkpoint's optimizer state,
        as one training run would: a fresh AdamW per job makes every RL step a sign-gradient
        step of size ``lr`` on every LoRA weight (Adam's first update is ``lr * g / |g|``),
        whatever the gradient's size. (On the demo's task the sweep in bench/RESULTS.md found
        no difference in outcome.) The moments live beside the latest adapter
        (``optimizer.pt``) and in memory between jobs.
        """
        latest = self.state.checkpoint(model_id, None)
        step = latest.step if latest else 0
        cached = self._live.get(model_id)
        if os.environ.get(RESET_OPTIMIZER) == "1":  # the old recipe, for bench/bench_learning.py
            model = self._policy(model_id)
            optimizer = _adamw(model, lr)
        elif cached is not None and cached[0] == step:
            _, model, optimizer = cached
        else:
            model = self._policy(model_id)
            optimizer = _adamw(model, lr)
            saved = Path(latest.path) / OPTIMIZER_FILE if latest else None
            if saved is not None and saved.is_file():
                optimizer.load_state_dict(torch.load(saved, weights_only=True))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        return model, optimizer

    def _save(
        self,
        job: JobRow,
        model: Any,
        metrics: dict[str, float],
        optimizer: torch.optim.Optimizer | None = None,
    ) -> int:
        """Write the adapter (and the optimizer state, RL only) atomically, then list the
        checkpoint with its training metrics (before training_ended). Only the latest
        checkpoint keeps its optimizer."""
        previous = self.state.checkpoint(job.model_id, None)
        step = (previous.step if previous else 0) + 1
        target = write_checkpoint(self.state, job.model_id, step, model, optimizer)
        self.state.add_checkpoint(job.model_id, step, target)
        self.state.set_metrics(job.model_id, step, metrics)
        if previous is not None:
            (Path(previous.path) / OPTIMIZER_FILE).unlink(missing_ok=True)
        self._live.pop(job.model_id, None)
        if optimizer is not None and self.max_live_models:
            self._live[job.model_id] = (step, model, optimizer)
            while len(self._live) > self.max_live_models:
                self._live.popitem(last=False)  # its state is on disk beside its adapter
        if self.on_checkpoint:
            self.on_checkpoint(job.model_id, step)
        return step

    # -- RL ----------------------------------------------------------------------------------

    def _rl(self, job: JobRow) -> int:
        request = job.request
        config = request.get("experimental_config") or {}
        groups = [TrajectoryGroup.model_validate(g) for g in request["trajectory_groups"]]
        samples, stats = rl_samples(groups, self.tok, config)
        self.state.add_event(job.id, "training_started", {"num_sequences": 1})
        started = time.monotonic()
        lr = float(config.get("learning_rate") or DEFAULT_RL_LR)
        model, optimizer = self._rl_policy(job.model_id, lr)
        metrics: dict[str, float] = {**stats, "learning_rate": lr, "num_trainable_tokens": 0.0}
        if not samples:
            if stats["num_groups_trainable"] == 0:
                metrics.update(loss=0.0, grad_norm=0.0)  # no signal: the checkpoint equals the last
            else:
                raise TrainingError(
                    "no trainable assistant turns: model turns must be Choice objects with logprobs "
                    "(or set allow_training_without_logprobs)"
                )
        else:
            metrics.update(self._rl_step(model, optimizer, samples, config))
        metrics["tokens_per_second"] = metrics["num_trainable_tokens"] / max(
            1e-9, time.monotonic() - started
        )
        self.state.add_event(job.id, "gradient_step", metrics)
        return self._save(job, model, metrics, optimizer)

    @staticmethod
    def _rl_step(
        model: Any, optimizer: torch.optim.Optimizer, samples: list[Sample], config: dict[str, Any]
    ) -> dict[str, float]:
        loss_fn = config.get("loss_fn") or ("cispo" if config.get("ppo") is False else "ppo")
        low = float(config.get("epsilon") or 0.2)
        high = float(config.get("epsilon_high") or low)
        total_tokens = sum(len(s.ids) - s.start for s in samples)
        loss_sum, clipped, ratio_sum = 0.0, 0.0, 0.0
        for prefix, batch in prefix_batches(samples):
            logprobs = shared_prefix_logprobs(model, batch, prefix)
            batch_loss = torch.zeros(())
            for sample, new in zip(batch, logprobs, strict=True):
                old = torch.tensor(sample.old_logprobs) if sample.old_logprobs else new.detach()
                ratio = torch.exp(new - old)
                advantage = torch.tensor(sample.advantage)
                if loss_fn == "cispo":
                    weight = torch.clamp(ratio, max=1 + high).detach()
                    loss = -(weight * advantage * new).sum()
                else:
                    clipped_ratio = torch.clamp(ratio, 1 - low, 1 + high)
                    loss = -torch.minimum(ratio * advantage, clipped_ratio * advantage).sum()
                batch_loss = batch_loss + loss
                clipped += float(((ratio < 1 - low) | (ratio > 1 + high)).sum())
                ratio_sum += float(ratio.detach().sum())
            (batch_loss / total_tokens).backward()
            loss_sum += float(batch_loss.detach())
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        )
        optimizer.step()
        return {
            "loss": loss_sum / total_tokens,
            "grad_norm": grad_norm if math.isfinite(grad_norm) else 0.0,
            "num_trainable_tokens": float(total_tokens),
            "num_datums": float(len(samples)),
            "clip_fraction": clipped / total_tokens,
            "mean_importance_ratio": ratio_sum / total_tokens,
        }

    # -- SFT ---------------------------------------------------------------------------------

    def _sft(self, job: JobRow) -> int:
        request = job.request
        config = request.get("config") or {}
        epochs = int((request.get("experimental_config") or {}).get("num_epochs", 1))
        url = request["training_data_url"]
        path = resolve_dataset(url, self.state, self.sft_data_dir)
        if url.startswith("file://"):
            try:
                rows = read_rows(path)
            except (OSError, TrainingError, ValueError):
                raise TrainingError(unreadable(url)) from None
        else:
            rows = read_rows(path)
        num_rows = len(rows)
        rows *= max(1, epochs)
        batch_size = config.get("batch_size")
        batch_size = DEFAULT_SFT_BATCH if batch_size in (None, "auto") else int(batch_size)
        batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        rates = config.get("learning_rate")
        if isinstance(rates, list):
            if len(rates) != len(batches):
                raise TrainingError(
                    f"learning_rate has {len(rates)} entries for {len(batches)} batches"
                )
        else:
            rates = [float(rates or DEFAULT_SFT_LR)] * len(batches)
        turns = config.get("assistant_turns") or "all"
        if turns not in ("all", "last"):
            raise TrainingError(f"assistant_turns must be 'all' or 'last', not {turns!r}")
        encoded = [
            self.tok.assistant_spans(row["messages"], row.get("tools"), turns) for row in rows
        ]
        # num_sequences is the API's "gradient steps to come" (W&B's and ART's progress bar)
        started: dict[str, Any] = {
            "num_sequences": len(batches),
            "num_rows": num_rows,
            "num_epochs": max(1, epochs),
            "batch_size": batch_size,
        }
        ignored = sorted(set(config) - SFT_CONFIG_KEYS)
        if ignored:  # accepted (newer clients send more), never silently
            started["ignored_config_keys"] = ignored
        self.state.add_event(job.id, "training_started", started)
        model = self._policy(job.model_id)
        optimizer = _adamw(model, rates[0])
        for index, batch in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = rates[index]
            start = index * batch_size
            items = encoded[start : start + len(batch)]
            tokens = sum(sum(mask) for _, mask in items)
            loss_sum = 0.0
            for ids, mask in items:
                logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
                targets = torch.tensor(ids[1:])
                keep = torch.tensor(mask[1:])
                losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
                loss = (losses * keep).sum()
                (loss / max(1, tokens)).backward()
                loss_sum += float(loss.detach())
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], 1.0
                )
            )
            optimizer.step()
            optimizer.zero_grad()
            metrics = {
                "loss": loss_sum / max(1, tokens),
                "grad_norm": grad_norm,
                "learning_rate": float(rates[index]),
                "num_trainable_tokens": float(tokens),
                "step": float(index + 1),
            }
            self.state.add_event(job.id, "gradient_step", metrics)
        return self._save(job, model, metrics)  # the checkpoint's: its last gradient step
