"""Export finished rollouts to W&B Weave as traces, the reward attached as feedback.

Each trajectory becomes one trace: a root ``rollout`` call (inputs: the opening messages, the
group and metadata; output: the whole conversation, reward, metrics) with one ``chat`` child
call per model turn (inputs: the messages and tools it saw; output: the turn, logprobs and
token ids included) and one ``history`` child per additional history. The reward goes on the
root as ``reward`` feedback, so Weave's UI can filter and sort rollouts by it.

``pip install 'wandb-serverless[weave]'``; then ``weave.init("entity/project")`` and pass
``weave=True`` to ``rollout(...)`` (or a ``WeaveClient``), or call ``log_trajectory`` later,
e.g. after a judge scored the group.
"""

from __future__ import annotations

from typing import Any

from wandb_serverless.rollouts.trajectory import Choice, History, Trajectory, choice_to_message


def _client(client: Any) -> Any:
    if client is not None and client is not True:
        return client
    try:
        import weave
    except ImportError as exc:
        raise ImportError(
            "Weave export needs the weave package: pip install 'wandb-serverless[weave]'"
        ) from exc
    found = weave.get_client() if hasattr(weave, "get_client") else None
    if found is None:
        raise RuntimeError("no Weave client: call weave.init('entity/project') first")
    return found


def _turn(item: Choice | dict[str, Any]) -> dict[str, Any]:
    return item.model_dump(mode="json") if isinstance(item, Choice) else item


def _log_history(client: Any, history: History, parent: Any) -> None:
    """One ``chat`` child call per model turn, each with the context it was given."""
    seen: list[dict[str, Any]] = []
    for item in history.messages_and_choices:
        is_model_turn = isinstance(item, Choice) or item.get("role") == "assistant"
        if is_model_turn:
            call = client.create_call(
                "chat",
                {"messages": list(seen), "tools": history.tools},
                parent=parent,
                use_stack=False,
            )
            client.finish_call(call, _turn(item))
        seen.append(choice_to_message(item) if isinstance(item, Choice) else item)


def log_trajectory(trajectory: Trajectory, *, client: Any = None) -> str:
    """Log one trajectory as a Weave trace; returns the root call's id."""
    client = _client(client)
    metadata = dict(trajectory.metadata)
    messages = trajectory.messages()
    opening = []
    for message in messages:
        if message["role"] == "assistant":
            break
        opening.append(message)
    root = client.create_call(
        "rollout",
        {"messages": opening, "tools": trajectory.tools, "metadata": metadata},
        attributes={k: v for k, v in metadata.items() if v is not None},
        display_name=f"rollout {metadata.get('group') or metadata.get('rollout_id', '')}".strip(),
        use_stack=False,
    )
    _log_history(client, trajectory, root)
    for side in trajectory.additional_histories:
        child = client.create_call(
            "history", {"messages": side.messages()[:1]}, parent=root, use_stack=False
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
        },
    )
    root.feedback.add("reward", {"value": trajectory.reward})
    return root.id
