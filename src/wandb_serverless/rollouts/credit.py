"""Roles and step rewards: what each recorded model turn says of itself, and the pure functions
that turn it into what a training job takes.

A trainable turn (a ``Choice``) carries ``turn``: ``{"index": its place among the rollout's
calls, "model": the model asked, "role": the role it plays, "step": the step it was made in,
"reward": its step reward}`` (all but ``index`` only when known).

- **Roles.** ``for_role(trajectory, role)`` is the trajectory as that role's model trains on it:
  its own turns stay model turns (exact tokens, as that model produced them); every other turn
  becomes a plain assistant message, context of the conversation as the model saw it, never
  trained. Conversations with none of its turns are left out.
- **Step rewards.** The training API takes one reward per trajectory. ``step_groups`` makes
  one trajectory per trainable turn, holding the conversation up to that turn with only that
  turn trainable, whose reward is the turn's return: its own step reward, plus the later ones
  and the run's reward (credited at the last turn), discounted by ``discount`` a turn. Turn
  ``k`` of every rollout of a group forms a group of its own (``"<group>#turn<k>"``), so an
  advantage compares a turn with the same turn of the same scenario, as Agent Lightning's
  transition mode does; the W&B training API is sent these groups, one reward per trajectory.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from wandb_serverless.trajectory import (
    Choice,
    History,
    Trajectory,
    TrajectoryGroup,
    choice_to_message,
)

log = logging.getLogger(__name__)


def turn_of(choice: Choice) -> dict[str, Any]:
    """What a recorded turn says of itself (empty for a turn recorded before roles existed)."""
    turn = (choice.model_extra or {}).get("turn")
    return turn if isinstance(turn, dict) else {}


def _trainable(item: Any) -> bool:
    return isinstance(item, Choice) and item.logprobs is not None


def _histories(trajectory: Trajectory) -> list[History]:
    return [trajectory, *trajectory.additional_histories]


def roles(trajectory: Trajectory) -> set[str]:
    """The roles whose turns the trajectory holds."""
    return {
        role
        for history in _histories(trajectory)
        for choice in history.choices()
        if (role := turn_of(choice).get("role"))
    }


def has_step_rewards(trajectory: Trajectory) -> bool:
    return any(
        "reward" in turn_of(choice) for h in _histories(trajectory) for choice in h.choices()
    )


def for_role(trajectory: Trajectory, role: str) -> tuple[Trajectory | None, int]:
    """The trajectory as ``role``'s model trains on it (None when it has no turn of ``role``),
    and how many trainable turns named no role (kept as context: never trained for a role
    they may not belong to). Captured ``exchanges`` name no role and are left out."""
    histories, unlabelled = [], 0
    for history in _histories(trajectory):
        items: list[Any] = []
        own = False
        for item in history.messages_and_choices:
            if not isinstance(item, Choice):
                items.append(item)
                continue
            named = turn_of(item).get("role")
            if named == role:
                own = True
                items.append(item)
                continue
            unlabelled += named is None and item.logprobs is not None
            items.append(choice_to_message(item))
        if own:
            histories.append(History(messages_and_choices=items, tools=history.tools))
    if trajectory.exchanges is not None:
        unlabelled += sum(len(e.choices()) for e in trajectory.exchanges.chat_completions)
    if not histories:
        return None, unlabelled
    main, *others = histories
    view = trajectory.model_copy(
        update={
            "messages_and_choices": main.messages_and_choices,
            "tools": main.tools,
            "additional_histories": others,
            "exchanges": None,
            "metadata": {**trajectory.metadata, "role": role},
        }
    )
    return view, unlabelled


def role_groups(groups: Iterable[TrajectoryGroup], role: str) -> list[TrajectoryGroup]:
    """Each group's trajectories as ``role`` trains on them (see ``for_role``); groups with
    none of its turns are left out. A role no trajectory has is a ValueError naming the roles
    there are; trainable turns with no role are counted and logged (they stay context)."""
    if not isinstance(role, str) or not role:
        raise ValueError(f"role must be a role's name, not {role!r}")
    out, seen, unlabelled, total = [], set[str](), 0, 0
    for group in groups:
        views = []
        for trajectory in group.trajectories:
            total += 1
            seen |= roles(trajectory)
            view, unnamed = for_role(trajectory, role)
            unlabelled += unnamed
            if view is not None:
                views.append(view)
        if views:
            metadata = {**group.metadata, "role": role}
            out.append(group.model_copy(update={"trajectories": views, "metadata": metadata}))
    if total and not out:
        raise ValueError(
            f"no recorded turn has the role {role!r} (roles recorded: {sorted(seen) or 'none'}; "
            "name a role with ChatWandb(role=...), WandbLLM(role=...) or rollouts.role(...))"
        )
    if unlabelled:
        log.warning(
            "%d trainable turn(s) name no role: kept as context for role %r, trained for none",
            unlabelled,
            role,
        )
    return out


def turn_returns(trajectory: Trajectory, discount: float = 1.0) -> list[tuple[Choice, float]]:
    """Each trainable turn (in the order they were made) and its return: its step reward plus
    the later turns' and the run's reward (at the last turn), discounted a turn at a time."""
    turns = [c for h in _histories(trajectory) for c in h.choices() if c.logprobs is not None]
    turns.sort(key=lambda c: turn_of(c).get("index", 0))
    rewards = [float(turn_of(c).get("reward", 0.0)) for c in turns]
    if rewards:
        rewards[-1] += trajectory.reward
    returns, ahead = [], 0.0
    for reward in reversed(rewards):
        ahead = reward + discount * ahead
        returns.append(ahead)
    return list(zip(turns, reversed(returns), strict=True))


def _up_to(trajectory: Trajectory, turn: Choice) -> History:
    """The conversation that holds ``turn``, cut after it, with only ``turn`` trainable."""
    for history in _histories(trajectory):
        for i, item in enumerate(history.messages_and_choices):
            if item is turn:
                before = [
                    choice_to_message(x) if isinstance(x, Choice) else x
                    for x in history.messages_and_choices[:i]
                ]
                return History(messages_and_choices=[*before, turn], tools=history.tools)
    raise AssertionError("the turn is in none of the trajectory's conversations")


def step_groups(groups: Iterable[TrajectoryGroup], discount: float = 1.0) -> list[TrajectoryGroup]:
    """Groups whose trajectories carry step rewards, as one group per turn position (see the
    module's doc): what a training job that takes one reward per trajectory learns from."""
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must be between 0 and 1, not {discount!r}")
    out: list[TrajectoryGroup] = []
    for group in groups:
        name = group.metadata.get("group", "group")
        by_turn: dict[int, list[Trajectory]] = defaultdict(list)
        for trajectory in group.trajectories:
            for k, (turn, value) in enumerate(turn_returns(trajectory, discount)):
                history = _up_to(trajectory, turn)
                by_turn[k].append(
                    Trajectory(
                        messages_and_choices=history.messages_and_choices,
                        tools=history.tools,
                        reward=value,
                        metadata={**trajectory.metadata, "turn": k},
                        metrics=dict(trajectory.metrics),
                        initial_policy_version=trajectory.initial_policy_version,
                        final_policy_version=trajectory.final_policy_version,
                    )
                )
        for k, trajectories in sorted(by_turn.items()):
            metadata = {**group.metadata, "group": f"{name}#turn{k}", "turn": k}
            out.append(TrajectoryGroup(trajectories=trajectories, metadata=metadata))
    return out


def check_trainable_context(groups: Iterable[TrajectoryGroup], config: Any) -> None:
    """Refuse ``allow_training_without_logprobs`` on role views and per-turn groups: it trains
    plain assistant messages too, and there those are other roles' or earlier turns, context
    that must not be trained for this model."""
    if config is None:
        return
    data = config if isinstance(config, dict) else config.model_dump(exclude_none=True)
    if not data.get("allow_training_without_logprobs"):
        return
    for group in groups:
        metadata = group.metadata if isinstance(group, TrajectoryGroup) else {}
        if "role" in metadata or "turn" in metadata:
            raise ValueError(
                "allow_training_without_logprobs trains every assistant message, and in a "
                f"role's groups or per-turn groups (group {metadata.get('group')!r}) other "
                "turns are context: train these with exact tokens (logprobs) instead"
            )
