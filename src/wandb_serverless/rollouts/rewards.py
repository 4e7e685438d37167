"""Rewards: per-trajectory and per-group reward functions, group-relative helpers, and a
RULER-style LLM judge that scores a whole group in one structured-output request."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from wandb_serverless.trajectory import Trajectory, TrajectoryGroup
from wandb_serverless.usage import judging

DEFAULT_RUBRIC = """\
- A trajectory that achieves its goal should always score higher than one that does not.
- Give partial credit for progress towards the goal.
- Prefer trajectories that reach the goal efficiently (fewer steps, no needless tool calls).
- Scores are between 0 and 1."""


def score_trajectories(
    group: TrajectoryGroup, reward_fn: Callable[[Trajectory], float]
) -> TrajectoryGroup:
    """Set each trajectory's reward from ``reward_fn(trajectory)``."""
    for trajectory in group.trajectories:
        trajectory.reward = float(reward_fn(trajectory))
    return group


def score_group(
    group: TrajectoryGroup, group_fn: Callable[[list[Trajectory]], Iterable[float]]
) -> TrajectoryGroup:
    """Set rewards from a function that sees the whole group (e.g. a ranking)."""
    rewards = list(group_fn(group.trajectories))
    if len(rewards) != len(group.trajectories):
        raise ValueError(
            f"group_fn returned {len(rewards)} rewards for {len(group.trajectories)} trajectories"
        )
    for trajectory, reward in zip(group.trajectories, rewards, strict=True):
        trajectory.reward = float(reward)
    return group


def group_advantages(rewards: list[float], *, scale: bool = True) -> list[float]:
    """Group-relative advantages: reward minus the group mean, over the std when ``scale``."""
    if not rewards:
        return []
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    return [(r - mean) / (std + 1e-6) if scale else r - mean for r in rewards]


def rank_rewards(scores: list[float]) -> list[float]:
    """Map raw scores to evenly spaced ranks in [0, 1] (ties share a rank)."""
    ordered = sorted(set(scores))
    if len(ordered) == 1:
        return [0.5] * len(scores)
    return [ordered.index(s) / (len(ordered) - 1) for s in scores]


def _render(messages: list[dict[str, Any]]) -> str:
    lines = []
    for message in messages:
        text = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            text += f"\n[calls {call['function']['name']}({call['function'].get('arguments', '')})]"
        lines.append(f"{message['role']}: {text}")
    return "\n".join(lines)


def judge_prompt(group: TrajectoryGroup, rubric: str = DEFAULT_RUBRIC) -> str:
    """The shared prefix once as context, then each trajectory's own continuation."""
    conversations = [t.messages() for t in group.trajectories]
    common = 0
    while all(len(c) > common for c in conversations) and all(
        c[common] == conversations[0][common] for c in conversations
    ):
        common += 1
    parts = [f"Rubric:\n{rubric}", f"<context>\n{_render(conversations[0][:common])}\n</context>"]
    tools = group.trajectories[0].tools
    if tools:
        parts.append(f"<available_tools>\n{json.dumps(tools)}\n</available_tools>")
    for i, conversation in enumerate(conversations, 1):
        parts.append(f'<trajectory id="{i}">\n{_render(conversation[common:])}\n</trajectory>')
    parts.append(
        f"Score each of the {len(conversations)} trajectories from 0 to 1, with a one-sentence explanation."
    )
    return "\n\n".join(parts)


def scores_schema(count: int) -> dict[str, Any]:
    """Exactly ``count`` scores, each with an explanation (constrained on servers that can)."""
    item = {
        "type": "object",
        "properties": {
            "trajectory_id": {"type": "string"},
            "explanation": {"type": "string", "maxLength": 300},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["trajectory_id", "explanation", "score"],
        "additionalProperties": False,
    }
    return {
        "title": "Scores",
        "type": "object",
        "properties": {
            "scores": {"type": "array", "items": item, "minItems": count, "maxItems": count}
        },
        "required": ["scores"],
        "additionalProperties": False,
    }


def ruler_score_group(
    group: TrajectoryGroup,
    judge: Any,
    *,
    rubric: str = DEFAULT_RUBRIC,
    swallow_exceptions: bool = False,
) -> TrajectoryGroup | None:
    """Score a group with an LLM judge (any LangChain chat model, e.g. ``ChatWandb``): one
    structured-output request per group. Each reward becomes the judge's score; the previous
    reward is kept in ``metrics["independent_reward"]`` and the explanation in ``logs``."""
    if any(t.additional_histories for t in group.trajectories):
        raise ValueError(
            "the judge scores single conversations; this group has additional_histories"
        )
    try:
        count = len(group.trajectories)
        with judging():  # counted as judge calls by a usage meter (the learning loop's)
            result = judge.with_structured_output(
                scores_schema(count), method="json_schema"
            ).invoke(judge_prompt(group, rubric))
        scores = result["scores"] if isinstance(result, dict) else result.scores
        if len(scores) != count:
            raise ValueError(f"the judge returned {len(scores)} scores for {count} trajectories")
    except Exception:
        if swallow_exceptions:
            return None
        raise
    scored = group.model_copy(deep=True)
    for trajectory, entry in zip(scored.trajectories, scores, strict=True):
        score = min(1.0, max(0.0, float(entry["score"])))
        trajectory.metrics["independent_reward"] = trajectory.reward
        trajectory.metrics["ruler_score"] = score
        trajectory.reward = score
        trajectory.logs.append(f"judge: {entry['explanation']}")
    return scored
