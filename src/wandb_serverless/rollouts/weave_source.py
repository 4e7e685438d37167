"""Rollouts read back from W&B Weave: the traces ``rollout(..., weave=True)`` exported (from any
number of machines) become trajectory groups again, exact tokens included.

``WeaveRollouts("entity/project").groups()`` has ``RolloutStore.groups()``'s shape and
semantics (grouped by the rollout's group, ungrouped rollouts left out, a rollout that raised in
its group's ``exceptions``), so ``train_rl`` takes either. Rewards come from feedback: the newest
``reward`` feedback on the rollout's root call (a judge or a person may add one later, in code or
in the Weave UI), or whatever a ``reward(feedback, trajectory)`` function makes of all of it
(thumbs up/down, an annotation's score); ``None`` from it leaves the rollout out (not yet judged).

Reading goes page by page (``page_size`` roots and then their calls per request), never the
whole project in one response.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from wandb_serverless.rollouts.credit import role_groups
from wandb_serverless.rollouts.store import best_sft_rows, collect_groups
from wandb_serverless.rollouts.weave_export import (
    CHAT_OP,
    HISTORY_OP,
    ROLLOUT_OP,
    connect,
    unpack_turn,
)
from wandb_serverless.trajectory import Choice, History, Trajectory, TrajectoryGroup

log = logging.getLogger(__name__)
RewardFn = Callable[[list[dict[str, Any]], Trajectory], float | None]
DEFAULT_PAGE_SIZE = 500


def newest_reward(feedback: list[dict[str, Any]], trajectory: Trajectory) -> float | None:
    """The newest ``reward`` feedback's ``value``; the exported reward when there is none."""
    rewards = [f for f in feedback if f.get("feedback_type") == "reward"]
    if not rewards:
        return trajectory.reward
    newest = max(rewards, key=lambda f: (str(f.get("created_at") or ""), str(f.get("id"))))
    value = (newest.get("payload") or {}).get("value")
    return None if value is None else float(value)


@dataclass
class WeaveRollout:
    """One exported rollout as read back: its root call, trajectory and feedback."""

    call_id: str
    trajectory: Trajectory
    feedback: list[dict[str, Any]] = field(default_factory=list)
    exception: dict[str, Any] | None = None
    started_at: datetime.datetime | None = None


def plain(value: Any) -> Any:
    """Weave's containers (and pydantic models) as plain JSON-like Python."""
    if hasattr(value, "model_dump"):
        return plain(value.model_dump())
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _project_id(client: Any) -> str:
    return f"{client.entity}/{client.project}"


def op_ref(client: Any, name: str) -> str:
    """Every version of one op of the client's project, as Weave's ``op_names`` filter takes."""
    return f"weave:///{_project_id(client)}/op/{name}:*"


def query_calls(
    client: Any,
    *,
    filter: dict[str, Any],
    query: dict[str, Any] | None = None,
    include_feedback: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[dict[str, Any]]:
    """Calls as plain dicts, oldest first, fetched ``page_size`` at a time."""
    offset = 0
    while True:
        page = [
            plain(call)
            for call in client.server.calls_query_stream(
                {
                    "project_id": _project_id(client),
                    "filter": filter,
                    "query": query,
                    "sort_by": [
                        {"field": "started_at", "direction": "asc"},
                        {"field": "id", "direction": "asc"},
                    ],
                    "limit": page_size,
                    "offset": offset,
                    "include_feedback": include_feedback,
                }
            )
        ]
        yield from page
        if len(page) < page_size:
            return
        offset += len(page)


def where(
    group: str | None,
    metadata: dict[str, Any] | None,
    since: datetime.datetime | None,
    until: datetime.datetime | None,
) -> dict[str, Any] | None:
    """A Weave query (its Mongo-like ``$expr``) for these filters; None for none."""
    terms: list[dict[str, Any]] = []
    equal = {**(metadata or {}), **({"group": group} if group is not None else {})}
    for key, value in equal.items():
        terms.append({"$eq": [{"$getField": f"attributes.{key}"}, {"$literal": value}]})
    if since is not None:
        terms.append({"$gte": [{"$getField": "started_at"}, {"$literal": since.timestamp()}]})
    if until is not None:
        terms.append({"$lt": [{"$getField": "started_at"}, {"$literal": until.timestamp()}]})
    if not terms:
        return None
    return {"$expr": terms[0] if len(terms) == 1 else {"$and": terms}}


def feedback_of(call: dict[str, Any]) -> list[dict[str, Any]]:
    return list(((call.get("summary") or {}).get("weave") or {}).get("feedback") or [])


class WeaveRollouts:
    """``WeaveRollouts("entity/project")``: the rollouts exported to one Weave project.

    ``client``: a ``WeaveClient`` to use instead of ``weave.init(project)``. ``reward``: how
    feedback becomes a reward (default :func:`newest_reward`).
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        client: Any = None,
        reward: RewardFn | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        self.client = connect(project, client)
        self.reward = reward or newest_reward
        self.page_size = page_size
        self.unreadable = 0  # roots left out because they are not a trajectory
        self.left_out = 0  # rollouts the last groups() left out: no model turn

    @property
    def project(self) -> str:
        return _project_id(self.client)

    def __repr__(self) -> str:
        return f"WeaveRollouts({self.project!r})"

    def rollouts(
        self,
        *,
        group: str | None = None,
        metadata: dict[str, Any] | None = None,
        since: datetime.datetime | None = None,
        until: datetime.datetime | None = None,
        call_ids: list[str] | None = None,
    ) -> Iterator[WeaveRollout]:
        """Exported rollouts, oldest first: ``group``, ``metadata`` (equal attributes),
        ``since``/``until`` (when the rollout was exported) and ``call_ids`` filter them."""
        wanted: dict[str, Any] = {
            "op_names": [op_ref(self.client, ROLLOUT_OP)],
            "trace_roots_only": True,
        }
        if call_ids is not None:
            wanted["call_ids"] = list(call_ids)
        roots = query_calls(
            self.client,
            filter=wanted,
            query=where(group, metadata, since, until),
            include_feedback=True,
            page_size=self.page_size,
        )
        page: list[dict[str, Any]] = []
        for root in roots:
            if root.get("output") is None:
                continue  # still open (or its end not sent yet): read on a later pass
            page.append(root)
            if len(page) == self.page_size:
                yield from self._read(page)
                page = []
        if page:
            yield from self._read(page)

    def _read(self, roots: list[dict[str, Any]]) -> Iterator[WeaveRollout]:
        """The roots' trajectories, their ``chat``/``history`` calls fetched in one query."""
        below: dict[str, list[dict[str, Any]]] = {}
        for call in query_calls(
            self.client,
            filter={"trace_ids": [r["trace_id"] for r in roots]},
            page_size=max(self.page_size, 1000),
        ):
            if call.get("parent_id"):
                below.setdefault(call["parent_id"], []).append(call)
        for root in roots:
            feedback = feedback_of(root)
            try:
                trajectory = rebuild(root, below)
            except (ValidationError, TypeError, ValueError, AttributeError) as exc:
                # another op named ``rollout``, or a trace edited by hand: left out, never the
                # reason the other rollouts cannot be read
                self.unreadable += 1
                log.warning("rollout %s is not one this package exported: %s", root["id"], exc)
                continue
            reward = self.reward(feedback, trajectory)
            if reward is None:
                continue
            trajectory.reward = float(reward)
            yield WeaveRollout(
                call_id=root["id"],
                trajectory=trajectory,
                feedback=feedback,
                exception=(root.get("output") or {}).get("exception"),
                started_at=root.get("started_at"),
            )

    def groups(
        self,
        *,
        group: str | None = None,
        metadata: dict[str, Any] | None = None,
        since: datetime.datetime | None = None,
        until: datetime.datetime | None = None,
        role: str | None = None,
    ) -> list[TrajectoryGroup]:
        """Rollouts grouped as ``RolloutStore.groups()`` groups them (``left_out``: those with
        no model turn), as the model of ``role`` trains on them when given."""
        rollouts = self.rollouts(group=group, metadata=metadata, since=since, until=until)
        groups, self.left_out = collect_groups((None, r.trajectory, r.exception) for r in rollouts)
        return role_groups(groups, role) if role is not None else groups

    def export_sft_rows(
        self, *, top_k_per_group: int | None = None, min_reward: float | None = None
    ) -> list[dict[str, Any]]:
        """``train.jsonl`` rows from the best rollouts, as ``RolloutStore.export_sft_rows``."""
        return best_sft_rows(self.groups(), top_k_per_group=top_k_per_group, min_reward=min_reward)


def as_groups(rollouts: Iterator[WeaveRollout] | list[WeaveRollout]) -> list[TrajectoryGroup]:
    return collect_groups((None, r.trajectory, r.exception) for r in rollouts)[0]


def _name(call: dict[str, Any]) -> str:
    """``chat`` from ``weave:///e/p/op/chat:digest`` (and from a plain name)."""
    return str(call.get("op_name") or "").rsplit("/", 1)[-1].split(":", 1)[0]


def _ordered(calls: list[dict[str, Any]], op: str, key: str) -> list[dict[str, Any]]:
    chosen = [c for c in calls if _name(c) == op]
    return sorted(chosen, key=lambda c: ((c.get("attributes") or {}).get(key, 0), c["started_at"]))


def _history(messages: list[dict[str, Any]], chats: list[dict[str, Any]]) -> list[Any]:
    """The conversation with each assistant turn replaced by what its ``chat`` call recorded:
    a ``Choice`` (logprobs and token ids included) where the model produced it."""
    items: list[Any] = []
    turns = iter(chats)
    for message in messages:
        if message.get("role") != "assistant":
            items.append(message)
            continue
        recorded = next(turns, None)
        output = (recorded or {}).get("output")
        if isinstance(output, dict):
            output = unpack_turn(output)
        if isinstance(output, dict) and "finish_reason" in output and "message" in output:
            items.append(Choice.model_validate(output))
        else:
            items.append(output if isinstance(output, dict) else message)
    return items


def rebuild(root: dict[str, Any], below: dict[str, list[dict[str, Any]]]) -> Trajectory:
    """A trajectory from its exported ``rollout`` root and the calls under it."""
    inputs, output = root.get("inputs") or {}, root.get("output") or {}
    children = below.get(root["id"], [])
    histories = []
    for side in _ordered(children, HISTORY_OP, "history"):
        chats = _ordered(below.get(side["id"], []), CHAT_OP, "turn")
        histories.append(
            History(
                messages_and_choices=_history(
                    (side.get("output") or {}).get("messages", []), chats
                ),
                tools=(side.get("inputs") or {}).get("tools"),
            )
        )
    metadata = dict(inputs.get("metadata") or {})
    metadata["weave_call_id"] = root["id"]
    return Trajectory(
        messages_and_choices=_history(
            output.get("messages", []), _ordered(children, CHAT_OP, "turn")
        ),
        tools=inputs.get("tools"),
        additional_histories=histories,
        reward=float(output.get("reward") or 0.0),
        metrics=output.get("metrics") or {},
        metadata=metadata,
        logs=output.get("logs") or [],
    )
