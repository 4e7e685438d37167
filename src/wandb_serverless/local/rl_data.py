"""RL training data as token sequences: each trainable model turn of a trajectory group is a
``Sample`` (the recorded prompt and completion ids when present, else the chat template's)
with its group-relative advantage and recorded logprobs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from wandb_serverless.local.artifacts import TrainingError
from wandb_serverless.local.tools import prepare_messages
from wandb_serverless.trajectory import Trajectory, TrajectoryGroup, choice_to_message

_TOKEN_ID = re.compile(r"^token_id:(\d+)$")


@dataclass
class Sample:
    """One trainable sequence: loss on ``ids[start:]``."""

    ids: list[int]
    start: int
    advantage: float = 1.0
    old_logprobs: list[float] | None = None


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
