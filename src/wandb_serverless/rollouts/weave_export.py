"""Export finished rollouts to W&B Weave as traces, the reward attached as feedback.

Each trajectory becomes one trace: a root ``rollout`` call (inputs: the opening messages, the
group and metadata; output: the whole conversation, reward, metrics) with one ``chat`` child
call per model turn (inputs: the messages and tools it saw; output: the turn, logprobs and
token ids included) and one ``history`` child per additional history. The reward goes on the
root as ``reward`` feedback, so Weave's UI can filter and sort rollouts by it.

``wandb_serverless.rollouts.weave_source`` reads these traces back into trajectory groups: each
``chat`` call carries its ``turn`` (its place among the history's assistant turns) as an
attribute, the root's output holds the whole conversation, and the rollout's exception if it
raised.

``pip install 'wandb-serverless[weave]'``; then ``weave.init("entity/project")`` and pass
``weave=True`` to ``rollout(...)`` (or a ``WeaveClient``), or call ``log_trajectory`` later,
e.g. after a judge scored the group.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

from wandb_serverless.trajectory import Choice, History, Trajectory, choice_to_message

ROLLOUT_OP, CHAT_OP, HISTORY_OP = "rollout", "chat", "history"


class WeaveNotReady(RuntimeError):
    """Weave is not set up for this export (no ``weave.init``, or another client is global)."""


def connect(project: str | None = None, client: Any = None) -> Any:
    """The WeaveClient to use: ``client``, the one ``weave.init`` made (for ``project``, when
    given), or a new one, ``weave.init(project)``."""
    if client is not None and client is not True:
        return client
    try:
        import weave
    except ImportError as exc:
        raise ImportError(
            "Weave needs the weave package: pip install 'wandb-serverless[weave]'"
        ) from exc
    found = weave.get_client() if hasattr(weave, "get_client") else None
    if found is not None and project in (None, found.project, f"{found.entity}/{found.project}"):
        return found
    if project is None:
        raise WeaveNotReady("no Weave client: call weave.init('entity/project') first")
    return weave.init(project)


TOKEN_FIELDS = ("logprobs", "token_ids", "prompt_token_ids")
#: the turn's exact tokens, one JSON string: Weave walks every element of a logged value (a
#: 300-token prompt's ids cost ~60 ms a rollout in weave 0.54's checks), never a string's
EXACT_TOKENS = "exact_tokens"


def _turn(item: Choice | dict[str, Any]) -> dict[str, Any]:
    """A model turn as the ``chat`` call's output: the message as is (for the UI), the
    tokens packed (for the trainer; :func:`unpack_turn` undoes it)."""
    if not isinstance(item, Choice):
        return item
    turn = item.model_dump(mode="json")
    tokens = {k: turn.pop(k) for k in TOKEN_FIELDS if turn.get(k) is not None}
    if tokens:
        turn[EXACT_TOKENS] = json.dumps(tokens, separators=(",", ":"))
    return turn


def unpack_turn(output: dict[str, Any]) -> dict[str, Any]:
    """A ``chat`` call's output with its tokens back in place."""
    if not isinstance(output.get(EXACT_TOKENS), str):
        return output
    turn = {k: v for k, v in output.items() if k != EXACT_TOKENS}
    return {**turn, **json.loads(output[EXACT_TOKENS])}


def _log_history(client: Any, history: History, parent: Any) -> None:
    """One ``chat`` child call per model turn, each with the context it was given."""
    seen: list[dict[str, Any]] = []
    turn = 0
    for item in history.messages_and_choices:
        is_model_turn = isinstance(item, Choice) or item.get("role") == "assistant"
        if is_model_turn:
            call = client.create_call(
                CHAT_OP,
                {"messages": list(seen), "tools": history.tools},
                parent=parent,
                attributes={"turn": turn},
                use_stack=False,
            )
            turn += 1
            client.finish_call(call, _turn(item))
        seen.append(choice_to_message(item) if isinstance(item, Choice) else item)


def log_trajectory(
    trajectory: Trajectory, *, client: Any = None, exception: dict[str, str] | None = None
) -> str:
    """Log one trajectory as a Weave trace (``exception``: what the rollout raised, if it did);
    returns the root call's id."""
    client = connect(client=client)
    with _as_weaves_client(client):
        return _log(client, trajectory, exception)


_SWAP = threading.Lock()


@contextlib.contextmanager
def _as_weaves_client(client: Any) -> Iterator[None]:
    """weave 0.54 traces through its one global client (``create_call`` and feedback read it,
    whatever client they are called on): a client given while none is global is made the
    global one for the export; while another one is, the export would go there, so it is an
    error that says so."""
    from weave.trace.context import weave_client_context as context

    if context.get_weave_client() is client and not _SWAP.locked():  # weave.init's client
        yield
        return
    with _SWAP:
        current = context.get_weave_client()
        if current is not None:
            raise WeaveNotReady(
                f"weave traces through the client weave.init made ({current.entity}/"
                f"{current.project}), so rollouts cannot be exported to another WeaveClient in "
                "this process: pass weave=True to export there"
            )
        context.set_weave_client_global(client)
        try:
            yield
        finally:
            context.set_weave_client_global(None)


def _log(client: Any, trajectory: Trajectory, exception: dict[str, str] | None) -> str:
    metadata = dict(trajectory.metadata)
    messages = trajectory.messages()
    opening = []
    for message in messages:
        if message["role"] == "assistant":
            break
        opening.append(message)
    root = client.create_call(
        ROLLOUT_OP,
        {"messages": opening, "tools": trajectory.tools, "metadata": metadata},
        attributes={k: v for k, v in metadata.items() if v is not None},
        display_name=f"rollout {metadata.get('group') or metadata.get('rollout_id', '')}".strip(),
        use_stack=False,
    )
    _log_history(client, trajectory, root)
    for index, side in enumerate(trajectory.additional_histories):
        child = client.create_call(
            HISTORY_OP,
            {"messages": side.messages()[:1], "tools": side.tools},
            parent=root,
            attributes={"history": index},
            use_stack=False,
        )
        _log_history(client, side, child)
        client.finish_call(child, {"messages": side.messages()})
    client.finish_call(
        root,
        {
            "messages": messages,
            "reward": trajectory.reward,
            "metrics": trajectory.metrics,
            "trainable": trajectory.is_trainable(),
            "logs": trajectory.logs,
            "exception": exception,
        },
    )
    root.feedback.add("reward", {"value": trajectory.reward})
    return root.id
