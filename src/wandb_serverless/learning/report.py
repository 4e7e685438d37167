"""What a step did and cost, in one record: the journal's ``step`` line, the metrics logged to
the model's history (and W&B run when hosted), and the progress line the loop prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from wandb_serverless.prices import PRICES_READ_ON, price_of


@dataclass
class StepReport:
    """One loop step. ``checkpoint`` is None when nothing was trained (no group had reward
    variance, every group was too far off-policy, or the job failed: ``outcome`` says)."""

    step: int
    outcome: str  # "trained", "skipped" or "train_failed"
    checkpoint: int | None = None
    policy_step: int | None = None
    restored_from: int | None = None  # trained on a copy of this served step (after a rejection)
    rollouts: int = 0
    failed_rollouts: int = 0
    timed_out: int = 0
    train_reward: float | None = None
    groups: int = 0
    trainable_groups: int = 0
    dropped_stale_groups: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_trained: int = 0
    judge_calls: int = 0
    judge_tokens: int = 0
    eval_prompt_tokens: int = 0
    eval_completion_tokens: int = 0
    sampling_s: float = 0.0
    training_s: float = 0.0
    evaluating_s: float = 0.0
    eval_score: float | None = None
    served_step: int | None = None  # what the alias serves after this step's decision
    served_score: float | None = None
    decision: str | None = None  # "promoted", "rejected" (with reason)
    reason: str = ""
    price_usd: float | None = None
    meter: list[list[Any]] = field(default_factory=list, repr=False)

    @classmethod
    def sampled(cls, step: int, sampled: dict[str, Any]) -> StepReport:
        """A step's report as far as its sampling (the journal's ``sampled`` record)."""
        fields = ("policy_step", "rollouts", "failed_rollouts", "timed_out", "train_reward",
                  "prompt_tokens", "completion_tokens", "judge_calls", "judge_tokens", "sampling_s")  # fmt: skip
        report = cls(step=step, outcome="trained", **{k: sampled[k] for k in fields})
        report.meter = list(sampled["meter"])
        return report

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("meter")
        return out

    def metrics(self) -> dict[str, float]:
        """Numbers for ``TrainableModel.log_metrics`` (its JSONL history, the W&B run)."""
        return {
            f"loop/{k}": float(v)
            for k, v in self.record().items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"
        }

    def line(self, tolerance: float) -> str:
        """The step's progress line."""
        head = f"step {self.step}"
        sampled = (
            f"{self.rollouts} rollouts from step {self.policy_step}"
            + (f" ({self.failed_rollouts} failed)" if self.failed_rollouts else "")
            + (f", reward {self.train_reward:.2f}" if self.train_reward is not None else "")
            + f", {self.prompt_tokens:,}+{self.completion_tokens:,} tokens"
            + (
                f", judge {self.judge_calls} calls {self.judge_tokens:,} tokens"
                if self.judge_calls
                else ""
            )
        )
        times = f"sample {self.sampling_s:.0f} s, train {self.training_s:.0f} s, eval {self.evaluating_s:.0f} s"
        price = f", ~${self.price_usd:.4f}" if self.price_usd is not None else ""
        if self.checkpoint is None:
            return f"{head}: {sampled}; nothing trained ({self.reason}); {times}{price}"
        trained = (
            f"{self.trainable_groups}/{self.groups} groups"
            + (f" ({self.dropped_stale_groups} too stale)" if self.dropped_stale_groups else "")
            + f", {self.tokens_trained:,} tokens -> checkpoint {self.checkpoint}"
            + (
                f" (on a copy of step {self.restored_from})"
                if self.restored_from is not None
                else ""
            )
        )
        score = "failed" if self.eval_score is None else f"{self.eval_score:.2f}"
        served = "" if self.served_score is None else f" ({self.served_score:.2f})"
        gate = (
            f"held-out {score}: {self.decision} (serving step {self.served_step}{served}, "
            f"tolerance {tolerance:g})"
        )
        return f"{head}: {sampled}; {trained}; {gate}; {times}{price}"


def estimate_price(meter_rows: list[list[Any]], checkpoints: str, base_model: str) -> float | None:
    """US dollars for the tokens counted (sampling, judging, evaluating) at W&B Inference's
    per-token prices (``wandb_serverless.prices``, read on ``PRICES_READ_ON``); a checkpoint
    costs what its base model costs. None when a model has no known price."""
    total = 0.0
    for _kind, model, _calls, prompt, completion in meter_rows:
        price = price_of(base_model if model == checkpoints else model)
        if price is None:
            return None
        total += price.of(prompt, completion)
    return total


__all__ = ["PRICES_READ_ON", "StepReport", "estimate_price"]
