"""The local artifact store, one module: datasets published under
``artifacts/entity/project/name/vN`` (and read back for SFT jobs), and checkpoints (LoRA
adapters with the optimizer state) under ``adapters/model_id/stepN``. Every path stays inside
the data dir (``State.inside``); every write is atomic (a temporary directory renamed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wandb_serverless.local.state import PathOutsideError, State, inside
from wandb_serverless.models import ArtifactRef
from wandb_serverless.trajectory import Trajectory

OPTIMIZER_FILE = "optimizer.pt"


class TrainingError(Exception):
    """A job that cannot run; its message becomes ``training_failed.error_message``."""


# -- checkpoints -------------------------------------------------------------------------------


def adapter_name(checkpoint_id: str) -> str:
    """The engine's name for a checkpoint's LoRA adapter."""
    return f"ckpt-{checkpoint_id}"


def _checkpoint_dir(state: State, model_id: str, step: int, fill: Callable[[Path], object]) -> Path:
    """``adapters/model_id/stepN``, filled by ``fill`` in a temporary directory, then renamed."""
    target = state.adapters_dir / model_id / f"step{step}"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=target.parent))
    try:
        fill(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_checkpoint(
    state: State, model_id: str, step: int, model: Any, optimizer: Any | None = None
) -> Path:
    """Write the adapter (and the optimizer state, if given) as ``stepN``, atomically."""

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)

    return _checkpoint_dir(state, model_id, step, fill)


def copy_checkpoint(state: State, model_id: str, source: Path, step: int) -> Path:
    """Copy a checkpoint's adapter (not its optimizer state) as ``stepN``, atomically."""
    ignore = shutil.ignore_patterns(OPTIMIZER_FILE)
    return _checkpoint_dir(
        state,
        model_id,
        step,
        lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=ignore),
    )


def delete_checkpoints(state: State, model_id: str, paths: list[str] | None = None) -> None:
    """Remove the given checkpoint directories, or all of a model's (``paths=None``)."""
    targets = [state.adapters_dir / model_id] if paths is None else [Path(p) for p in paths]
    for path in targets:
        shutil.rmtree(path, ignore_errors=True)


# -- datasets ----------------------------------------------------------------------------------


def dataset_versions(base: Path) -> list[int]:
    """The published versions of a dataset directory, ascending."""
    return sorted(int(p.name[1:]) for p in base.iterdir() if re.fullmatch(r"v\d+", p.name))


def publish_dataset(
    state: State,
    entity: str,
    project: str,
    name: str,
    rows: list[dict[str, Any]],
    *,
    filename: str = "train.jsonl",
    metadata: dict[str, Any] | None = None,
) -> str:
    """Write ``rows`` as the next version of ``entity/project/name``; its url."""
    base = state.inside(state.artifacts_dir, entity, project, name)
    base.mkdir(parents=True, exist_ok=True)
    version = 1 + max(dataset_versions(base), default=-1)
    # encoded before anything is written: text that is not Unicode (a lone surrogate) raises
    # UnicodeEncodeError (a 400 on the server) and leaves no half-written version
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    meta = json.dumps({"format": "jsonl", "rows": len(rows), **(metadata or {})}).encode()
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=base))
    try:
        (tmp / filename).write_bytes(data)
        (tmp / "metadata.json").write_bytes(meta)
        tmp.rename(base / f"v{version}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return f"wandb-artifact:///{entity}/{project}/{name}:v{version}"


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
            raise TrainingError(unreadable(url)) from None
    try:
        ref = ArtifactRef.parse(url)
        base = state.inside(state.artifacts_dir, ref.entity, ref.project, ref.name)
    except (ValueError, PathOutsideError) as exc:
        raise TrainingError(str(exc)) from None
    alias = ref.alias or "latest"
    if alias == "latest" and base.is_dir():
        versions = dataset_versions(base)
        alias = f"v{versions[-1]}" if versions else alias
    path = state.inside(base, alias)
    for name in ("train.jsonl", "trajectories.jsonl"):
        if (path / name).is_file():
            return path / name
    raise TrainingError(f"training data {url!r} was not found in the local artifact store")


def unreadable(url: str) -> str:
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
