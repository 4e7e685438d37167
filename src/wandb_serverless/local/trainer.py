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

import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wandb_serverless.local.state import JobRow, PathOutsideError, State, inside
from wandb_serverless.local.tools import prepare_messages
from wandb_serverless.models import ArtifactRef
from wandb_serverless.rollouts.trajectory import Trajectory, TrajectoryGroup, choice_to_message

log = logging.getLogger(__name__)
# peft reads transformers' deprecated `is_gradient_checkpointing` on every adapter save: noise
# in every training job's output, nothing a user can act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

DEFAULT_RL_LR = 5e-4  # LoRA on a 135M model (rl_probe.md); hosted W&B's defaults differ
DEFAULT_SFT_LR = 5e-4
DEFAULT_SFT_BATCH = 4
SFT_CONFIG_KEYS = {"batch_size", "learning_rate", "assistant_turns", "metric_logging"}
OPTIMIZER_FILE = "optimizer.pt"
#: "1": a fresh AdamW per RL job, the recipe before optimizer state was kept (for comparisons)
RESET_OPTIMIZER = "WANDB_SERVERLESS_RESET_OPTIMIZER"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
_TOKEN_ID = re.compile(r"^token_id:(\d+)$")


class TrainingError(Exception):
    """A job that cannot run; its message becomes ``training_failed.error_message``."""


@dataclass
class Sample:
    """One trainable sequence: loss on ``ids[start:]``."""

    ids: list[int]
    start: int
    advantage: float = 1.0
    old_logprobs: list[float] | None = None


# -- turning data into token sequences ---------------------------------------------------------


class Tokenization:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id

    def render(
        self, messages: list[dict], tools: list[dict] | None, generation_prompt: bool
    ) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            prepare_messages(messages, tools),
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def completion_ids(self, message: dict) -> list[int]:
        text = prepare_messages([message], None)[0]["content"]
        return [*self.tokenizer(text, add_special_tokens=False).input_ids, self.eos]

    def assistant_spans(
        self, messages: list[dict], tools: list[dict] | None, turns: str = "all"
    ) -> tuple[list[int], list[bool]]:
        """The whole conversation's ids and a mask that is True on assistant tokens (of every
        assistant turn, or with ``turns="last"`` only the last one's)."""
        ids: list[int] = []
        mask: list[bool] = []
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or (turns == "last" and i != last):
                continue
            prompt = self.render(messages[:i], tools, True)
            full = prompt + self.completion_ids(message)
            if full[: len(ids)] != ids:
                raise TrainingError(
                    "the chat template does not extend earlier turns; cannot mask assistant tokens"
                )
            mask += [False] * (len(prompt) - len(ids)) + [True] * (len(full) - len(prompt))
            ids = full
        return ids, mask


def _choice_tokens(choice: Any) -> tuple[list[int] | None, list[int] | None, list[float] | None]:
    extra = choice.model_extra or {}
    entries = (choice.logprobs.content or []) if choice.logprobs else []
    logprobs = [e.logprob for e in entries] or None
    token_ids = extra.get("token_ids")
    if token_ids is None and entries:
        parsed = [_TOKEN_ID.match(e.token) for e in entries]
        if all(parsed):
            token_ids = [int(m.group(1)) for m in parsed]  # type: ignore[union-attr]
    return extra.get("prompt_token_ids"), token_ids, logprobs


def rl_samples(
    groups: list[TrajectoryGroup], tok: Tokenization, config: dict[str, Any]
) -> tuple[list[Sample], dict[str, float]]:
    scale = config.get("normalize_advantages", config.get("scale_rewards", True))
    scale = True if scale is None else scale
    without_logprobs = bool(config.get("allow_training_without_logprobs"))
    samples: list[Sample] = []
    rewards, stds, trainable_groups = [], [], 0
    for group in groups:
        values = group.rewards
        rewards += values
        std = group.reward_std()
        stds.append(std)
        if not group.has_signal():
            continue
        trainable_groups += 1
        mean = sum(values) / len(values)
        for trajectory in group.trajectories:
            advantage = (trajectory.reward - mean) / (std + 1e-6 if scale else 1.0)
            if advantage == 0:
                continue
            samples += _trajectory_samples(trajectory, advantage, tok, without_logprobs)
    stats = {
        "reward": sum(rewards) / max(1, len(rewards)),
        "reward_std_dev": sum(stds) / max(1, len(stds)),
        "num_trajectories": float(len(rewards)),
        "num_groups_submitted": float(len(groups)),
        "num_groups_trainable": float(trainable_groups),
    }
    return samples, stats


def _trajectory_samples(
    trajectory: Trajectory, advantage: float, tok: Tokenization, without_logprobs: bool
) -> list[Sample]:
    samples = []
    for history in [trajectory, *trajectory.additional_histories]:
        context: list[dict] = []
        for item in history.messages_and_choices:
            if isinstance(item, dict):
                if item["role"] == "assistant" and without_logprobs:
                    prompt = tok.render(context, history.tools, True)
                    samples.append(
                        Sample(prompt + tok.completion_ids(item), len(prompt), advantage)
                    )
                context.append(item)
                continue
            if item.logprobs is not None or without_logprobs:
                samples.append(_choice_sample(item, context, history.tools, advantage, tok))
            context.append(choice_to_message(item))
    for exchange in trajectory.exchanges.chat_completions if trajectory.exchanges else []:
        messages = exchange.request.get("messages") or []
        tools = exchange.request.get("tools")
        for choice in exchange.choices():
            if choice.logprobs is not None or without_logprobs:
                samples.append(_choice_sample(choice, messages, tools, advantage, tok))
    return samples


def _choice_sample(
    choice: Any, context: list[dict], tools: list[dict] | None, advantage: float, tok: Tokenization
) -> Sample:
    """One model turn: the recorded prompt and completion ids when present (no retokenising
    drift), else the chat template's; the recorded logprobs when they match the tokens."""
    prompt_ids, token_ids, logprobs = _choice_tokens(choice)
    if prompt_ids is None:
        prompt_ids = tok.render(context, tools, True)
    if token_ids is None:
        token_ids = tok.completion_ids(choice_to_message(choice))
    if logprobs is not None and len(logprobs) != len(token_ids):
        logprobs = None
    return Sample(list(prompt_ids) + list(token_ids), len(prompt_ids), advantage, logprobs)


def _adamw(model: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0
    )


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
    rows = torch.cat([torch.full((len(s.ids) - s.start,), i) for i, s in enumerate(samples)])
    cols = torch.cat([torch.arange(s.start - 1, len(s.ids) - 1) for s in samples])
    targets = torch.cat([torch.tensor(s.ids[s.start :]) for s in samples])
    logits = inner.lm_head(hidden[rows, cols]).float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
    return list(logprobs.split([len(s.ids) - s.start for s in samples]))


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
    rows = torch.cat([torch.full((len(s.ids) - s.start,), i) for i, s in enumerate(samples)])
    cols = torch.cat([torch.arange(s.start - 1 - prefix, len(s.ids) - 1 - prefix) for s in samples])
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
    prefix, batch = 0, []
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


# -- SFT data ----------------------------------------------------------------------------------

ROLES = {"system", "developer", "user", "assistant", "tool"}


def validate_row(row: Any, number: int) -> dict[str, Any]:
    """One train.jsonl row, or TrainingError naming the row (1-based) and what is wrong."""
    where = f"row {number}"
    if (
        not isinstance(row, dict)
        or not isinstance(row.get("messages"), list)
        or not row["messages"]
    ):
        raise TrainingError(f"{where}: 'messages' must be a non-empty list")
    for i, message in enumerate(row["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise TrainingError(f"{where}: messages[{i}].role must be one of {sorted(ROLES)}")
    if row["messages"][-1]["role"] != "assistant":
        raise TrainingError(f"{where}: the last message must be from the assistant")
    tools = row.get("tools")
    if tools is not None and not (
        isinstance(tools, list)
        and all(
            isinstance(t, dict) and t.get("type") == "function" and "name" in t.get("function", {})
            for t in tools
        )
    ):
        raise TrainingError(f"{where}: 'tools' must be OpenAI function tools")
    return row


def resolve_dataset(url: str, state: State, sft_data_dir: Path | None = None) -> Path:
    """A ``wandb-artifact:///`` dataset in the local artifact store, or a ``file://`` path
    inside ``sft_data_dir`` (the server's explicit opt-in; refused without one)."""
    if url.startswith("file://"):
        if sft_data_dir is None:
            raise TrainingError(
                "file:// datasets are refused (start the server with --sft-data-dir)"
            )
        try:
            return inside(sft_data_dir, Path(url[len("file://") :]))
        except PathOutsideError:
            raise TrainingError(_unreadable(url)) from None
    try:
        ref = ArtifactRef.parse(url)
        base = state.inside(state.artifacts_dir, ref.entity, ref.project, ref.name)
    except (ValueError, PathOutsideError) as exc:
        raise TrainingError(str(exc)) from None
    alias = ref.alias or "latest"
    if alias == "latest" and base.is_dir():
        versions = sorted(
            (p for p in base.iterdir() if re.fullmatch(r"v\d+", p.name)),
            key=lambda p: int(p.name[1:]),
        )
        alias = versions[-1].name if versions else alias
    path = state.inside(base, alias)
    for name in ("train.jsonl", "trajectories.jsonl"):
        if (path / name).is_file():
            return path / name
    raise TrainingError(f"training data {url!r} was not found in the local artifact store")


def _unreadable(url: str) -> str:
    # one text for missing, unreadable and invalid data outside the store: an error must not
    # tell a caller whether some path exists
    return f"training data {url!r} could not be used: it must be a readable, valid train.jsonl"


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError:
                raise TrainingError(f"row {number}: not valid JSON") from None
            if path.name == "trajectories.jsonl":  # one Trajectory per line
                trajectory = Trajectory.model_validate(data)
                data = {"messages": trajectory.messages(), "tools": trajectory.tools}
            rows.append(validate_row(data, number))
    if not rows:
        raise TrainingError(f"{path.name} has no rows")
    return rows


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
    ) -> None:
        self.state = state
        self.sft_data_dir = sft_data_dir
        self.base_path = base_path
        self.tok = Tokenization(tokenizer)
        self.on_checkpoint = on_checkpoint
        self._wake = threading.Event()
        self._stop = threading.Event()
        # the last RL policy and its optimizer per model, keyed by the step they produced
        self._live: dict[str, tuple[int, Any, torch.optim.Optimizer]] = {}
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
        target = self.state.adapters_dir / job.model_id / f"step{step}"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.state.add_checkpoint(job.model_id, step, target)
        self.state.set_metrics(job.model_id, step, metrics)
        if previous is not None:
            (Path(previous.path) / OPTIMIZER_FILE).unlink(missing_ok=True)
        if optimizer is not None:
            self._live[job.model_id] = (step, model, optimizer)
        else:
            self._live.pop(job.model_id, None)
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
                raise TrainingError(_unreadable(url)) from None
        else:
            rows = read_rows(path)
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
        started: dict[str, Any] = {"num_sequences": len(batches)}
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
