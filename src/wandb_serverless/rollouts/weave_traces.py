"""Training data from chat calls that Weave's own integrations traced: the openai calls under
LangChain (``ChatOpenAI``), LlamaIndex (``OpenAI``, ``OpenAILike``) or plain ``openai`` code,
recorded by ``weave.init`` without this package.

Each trace (one agent run) becomes a trajectory: its chat calls merged as ART merges captured
calls (a call whose request extends a history's messages, with the same tools, continues that
history; any other call starts a new one, an additional history).

What each can train:

- **SFT, always**: :meth:`WeaveTraces.sft_rows` gives the conversation up to its last assistant
  turn, the best-scored run per opening prompt.
- **RL, only with exact tokens**: every model turn must hold its ``logprobs``, ``token_ids`` and
  the prompt's ``prompt_token_ids``. That is a non-streamed call to a vLLM-compatible server
  (W&B Inference, the local backend) made with ``logprobs=True`` and
  ``extra_body={"return_token_ids": True}``. Streamed calls (Weave's record of a stream keeps
  no token ids), calls without logprobs, and providers that return no token ids are SFT only:
  :meth:`WeaveTraces.groups` leaves such runs out and counts them in ``skipped``.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from wandb_serverless.rollouts.store import sft_row
from wandb_serverless.rollouts.weave_export import connect
from wandb_serverless.rollouts.weave_source import (
    DEFAULT_PAGE_SIZE,
    feedback_of,
    op_ref,
    query_calls,
    where,
)
from wandb_serverless.trajectory import Choice, History, Trajectory, TrajectoryGroup

log = logging.getLogger(__name__)

OPENAI_OP = "openai.chat.completions.create"
ScoreFn = Callable[[list[dict[str, Any]]], float | None]
REACTIONS = {"👍": 1.0, "👎": 0.0}


def feedback_score(feedback: list[dict[str, Any]]) -> float | None:
    """The newest score among ``reward`` feedback (its ``value``) and thumbs up/down reactions
    (1.0/0.0); None for a run nobody scored."""
    scored = []
    for item in feedback:
        payload = item.get("payload") or {}
        kind = str(item.get("feedback_type") or "")
        if kind == "reward" and isinstance(payload.get("value"), int | float):
            scored.append((item, float(payload["value"])))
        elif kind.startswith("wandb.reaction") and payload.get("emoji") in REACTIONS:
            scored.append((item, REACTIONS[payload["emoji"]]))
    if not scored:
        return None
    return max(scored, key=lambda s: (str(s[0].get("created_at") or ""), str(s[0].get("id"))))[1]


@dataclass
class TracedRun:
    """One traced agent run: its trajectory, feedback and score, and whether RL can use it."""

    trace_id: str
    trajectory: Trajectory
    feedback: list[dict[str, Any]] = field(default_factory=list)
    score: float | None = None
    trainable: bool = False


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _arguments(raw: Any) -> Any:
    """Tool-call arguments compared by value: clients re-serialise them (``ChatOpenAI`` sends
    ``{"city": "Paris"}`` for the sampled ``{"city":"Paris"}``)."""
    try:
        return json.dumps(json.loads(raw), sort_keys=True)
    except (TypeError, ValueError):
        return raw


def _key(message: dict[str, Any]) -> tuple:
    """What makes two messages the same turn, whatever client wrote them."""
    calls = tuple(
        (
            c.get("id"),
            (c.get("function") or {}).get("name"),
            _arguments((c.get("function") or {}).get("arguments")),
        )
        for c in message.get("tool_calls") or []
    )
    return (message.get("role"), _text(message.get("content")), calls, message.get("tool_call_id"))


def _message(item: Any) -> dict[str, Any]:
    if isinstance(item, Choice):
        message = item.message.model_dump(exclude_none=True)
        return {k: v for k, v in message.items() if v not in ([], None)}
    return item


def _turn(output: dict[str, Any]) -> tuple[Any, bool]:
    """The call's first choice: a trainable ``Choice`` when it holds exact tokens, else the
    assistant message as context."""
    choices = output.get("choices") or [{}]
    choice = dict(choices[0])
    message = {k: v for k, v in (choice.get("message") or {}).items() if v is not None}
    message.setdefault("role", "assistant")
    logprobs = (choice.get("logprobs") or {}).get("content")
    prompt_ids = output.get("prompt_token_ids")
    if logprobs and choice.get("token_ids") and prompt_ids:
        choice.update(message=message, prompt_token_ids=prompt_ids, index=choice.get("index", 0))
        choice.setdefault("finish_reason", "stop")
        try:
            return Choice.model_validate(choice), True
        except ValidationError:  # not an OpenAI choice after all: context, not trainable
            log.debug("a traced choice with tokens did not validate", exc_info=True)
    return message, False


def merge(calls: list[dict[str, Any]]) -> tuple[list[History], bool]:
    """Calls (oldest first) as histories, ART's way; whether every model turn is trainable."""
    histories: list[History] = []
    exact = True
    for call in calls:
        inputs = call.get("inputs") or {}
        request = [m for m in inputs.get("messages") or [] if isinstance(m, dict)]
        tools = inputs.get("tools") or None
        turn, has_tokens = _turn(call.get("output") or {})
        exact = exact and has_tokens
        wanted = [_key(m) for m in request]
        for history in histories:
            seen = [_key(_message(m)) for m in history.messages_and_choices]
            if seen == wanted[: len(seen)] and history.tools == tools:
                history.messages_and_choices += [*request[len(seen) :], turn]
                break
        else:
            histories.append(History(messages_and_choices=[*request, turn], tools=tools))
    return histories, exact


def _opening(trajectory: Trajectory) -> str:
    opening = []
    for item in trajectory.messages_and_choices:
        if not isinstance(item, dict) or item.get("role") == "assistant":
            break
        opening.append(_key(item))
    return json.dumps(opening, default=str)


class WeaveTraces:
    """``WeaveTraces("entity/project")``: the chat calls Weave traced in one project.

    ``score``: feedback to a number (default :func:`feedback_score`: ``reward`` feedback,
    thumbs up/down); runs are scored by the feedback on their trace's root call and on their
    chat calls. ``op_names``: the traced chat ops to read (default the openai integration's).
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        client: Any = None,
        score: ScoreFn | None = None,
        op_names: tuple[str, ...] = (OPENAI_OP,),
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self.client = connect(project, client)
        self.score = score or feedback_score
        self.op_names = op_names
        self.page_size = page_size
        self.skipped = 0

    def runs(
        self, *, since: datetime.datetime | None = None, until: datetime.datetime | None = None
    ) -> Iterator[TracedRun]:
        """Every traced run with chat calls, oldest first."""
        by_trace: dict[str, list[dict[str, Any]]] = {}
        for call in query_calls(
            self.client,
            filter={"op_names": [op_ref(self.client, name) for name in self.op_names]},
            query=where(None, None, since, until),
            include_feedback=True,
            page_size=self.page_size,
        ):
            if call.get("output") is not None:
                by_trace.setdefault(call["trace_id"], []).append(call)
        traces = list(by_trace)
        for start in range(0, len(traces), self.page_size):
            page = traces[start : start + self.page_size]
            roots = {
                root["trace_id"]: root
                for root in query_calls(
                    self.client,
                    filter={"trace_ids": page, "trace_roots_only": True},
                    include_feedback=True,
                    page_size=self.page_size,
                )
            }
            for trace_id in page:
                calls = by_trace[trace_id]
                histories, exact = merge(calls)
                root = roots.get(trace_id, {})
                feedback = feedback_of(root)
                feedback += [f for c in calls if c["id"] != root.get("id") for f in feedback_of(c)]
                score = self.score(feedback)
                main = histories[0]
                trajectory = Trajectory(
                    messages_and_choices=main.messages_and_choices,
                    tools=main.tools,
                    additional_histories=histories[1:],
                    reward=score or 0.0,
                    metadata={"weave_trace_id": trace_id},
                )
                yield TracedRun(trace_id, trajectory, feedback, score, exact)

    def sft_rows(
        self,
        *,
        top_k_per_prompt: int | None = 1,
        min_score: float | None = None,
        since: datetime.datetime | None = None,
        until: datetime.datetime | None = None,
    ) -> list[dict[str, Any]]:
        """``train.jsonl`` rows: per opening prompt, its best-scored ``top_k_per_prompt`` runs
        (None: all), unscored runs last; ``min_score`` keeps only runs scored at least that."""
        by_prompt: dict[str, list[TracedRun]] = {}
        for run in self.runs(since=since, until=until):
            if min_score is not None and (run.score is None or run.score < min_score):
                continue
            by_prompt.setdefault(_opening(run.trajectory), []).append(run)
        rows = []
        for runs in by_prompt.values():
            ranked = sorted(runs, key=lambda r: -1e30 if r.score is None else r.score, reverse=True)
            for run in ranked[:top_k_per_prompt] if top_k_per_prompt else ranked:
                row = sft_row(run.trajectory)
                if row is not None:
                    rows.append(row)
        return rows

    def groups(
        self,
        *,
        group_by: Callable[[TracedRun], str] | None = None,
        since: datetime.datetime | None = None,
        until: datetime.datetime | None = None,
    ) -> list[TrajectoryGroup]:
        """RL groups of the scored runs that hold exact tokens, by opening prompt (or
        ``group_by``); the others are counted in ``skipped`` (SFT only)."""
        key = group_by or (lambda run: _opening(run.trajectory))
        grouped: dict[str, list[Trajectory]] = {}
        self.skipped = 0
        for run in self.runs(since=since, until=until):
            if not run.trainable or run.score is None:
                self.skipped += 1
                continue
            grouped.setdefault(key(run), []).append(run.trajectory)
        if self.skipped:
            log.warning(
                "%d traced run(s) left out of RL: no score, or no exact tokens (SFT only)",
                self.skipped,
            )
        return [
            TrajectoryGroup(trajectories=items, metadata={"group": name})
            for name, items in grouped.items()
        ]
