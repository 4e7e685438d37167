"""The trainer: groups of rollouts → an RL job, best traces → an SFT job; follow the job's events
with a progress bar; hand back the new checkpoint for ChatWandb / WandbLLM to serve."""

from __future__ import annotations

import json
import logging
import time
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from wandb_serverless.aliases import served_aliases
from wandb_serverless.api import APIStatusError, Client
from wandb_serverless.api.types import ExperimentalTrainingConfig, SFTTrainingConfig
from wandb_serverless.config import wandb_sdk
from wandb_serverless.models import CheckpointRef
from wandb_serverless.rollouts.credit import check_trainable_context, has_step_rewards, step_groups
from wandb_serverless.rollouts.store import sft_row
from wandb_serverless.trajectory import Trajectory, TrajectoryGroup
from wandb_serverless.wandb_run import open_run

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    job_id: str | None = None
    dropped_groups: int = 0


def trainable_groups(
    groups: Iterable[TrajectoryGroup | dict], *, discount: float = 1.0
) -> tuple[list[TrajectoryGroup], int]:
    """Groups with reward variance (the others carry no gradient), and how many were dropped.
    Groups whose turns carry step rewards become one group per turn position first, each turn
    rewarded with its return (``rollouts.credit.step_groups``, ``discount`` a turn)."""
    parsed = [
        g if isinstance(g, TrajectoryGroup) else TrajectoryGroup.model_validate(g) for g in groups
    ]
    if any(has_step_rewards(t) for g in parsed for t in g.trajectories):
        parsed = step_groups(parsed, discount)
    kept = [g for g in parsed if g.has_signal()]
    return kept, len(parsed) - len(kept)


def read_json_rows(path: str | Path) -> list[Any]:
    """The values of a JSON Lines file, or of a file holding one JSON array; a value that is
    not JSON is an error naming the file and the line."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        try:
            return list(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a JSON array: {exc}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}, line {number}: not JSON ({exc.msg}, column {exc.colno}); "
                    "expected one JSON object a line"
                ) from None
    return rows


def top_k_per_group(groups: Iterable[TrajectoryGroup], k: int = 1) -> list[Trajectory]:
    """The ``k`` best trajectories of each group, for SFT."""
    best: list[Trajectory] = []
    for group in groups:
        best += sorted(group.trajectories, key=lambda t: t.reward, reverse=True)[:k]
    return best


class TrainableModel:
    """A model you train: registers itself (``return_existing``), knows its latest step, and
    hands out the reference adapters serve: ``ChatWandb(model=tm.ref)`` always gets the newest
    checkpoint; ``tm.ref_at(step)`` pins one.
    """

    def __init__(
        self,
        name: str,
        project: str,
        base_model: str,
        entity: str | None = None,
        *,
        client: Client | None = None,
        history_dir: str | Path = ".wandb-serverless",
        progress: bool = True,
    ) -> None:
        self.name, self.project, self.base_model = name, project, base_model
        self.client = client or Client(entity=entity, project=project)
        entity = entity or self.client.settings.entity  # WANDB_ENTITY
        created = self.client.models.create(
            project=project, name=name, base_model=base_model, entity=entity, return_existing=True
        )
        self.id, self.entity, self.run_id = created.id, created.entity, created.run_id
        self.history_path = Path(history_dir) / f"{self.entity}-{project}-{name}.jsonl"
        self.progress = progress
        self._has_checkpoint = False  # once one exists, ``ref`` is ``:latest`` for good
        self._wandb_run: Any = None  # opened on the first metrics (wandb_run.open_run)
        self._owns_run = False
        self._run_finalizer: weakref.finalize | None = None

    @classmethod
    def from_id(
        cls, model_id: str, *, client: Client | None = None, **options: Any
    ) -> TrainableModel:
        """The registered model with this ID. W&B's training API has no lookup by ID (only
        create-or-get by name), so this works where models can be listed: a local backend. On
        W&B, build it by name: ``TrainableModel(name, project, base_model)``."""
        client = client or Client()
        try:
            models = client.models.list()
        except APIStatusError as exc:
            if exc.status_code not in (404, 405):
                raise
            raise ValueError(
                "W&B's training API cannot look a model up by ID: give its name, project and "
                "base model instead (CLI: --name N --project P --base-model B)"
            ) from None
        for model in models:
            if model.id == model_id:
                return cls(
                    model.name,
                    model.project,
                    model.base_model,
                    model.entity,
                    client=client,
                    **options,
                )
        raise ValueError(f"no model with ID {model_id!r} is registered at {client.base_url}")

    def __repr__(self) -> str:
        return f"TrainableModel({self.entity}/{self.project}/{self.name}, id={self.id})"

    @property
    def ref(self) -> str:
        """``wandb-artifact:///entity/project/name:latest`` (always the newest checkpoint) once
        there is one; the base model before that (W&B has no ``:latest`` yet). A chat model
        built from ``ref`` after the first step follows every later one. Asks the server only
        until this object has seen a checkpoint (a training step here, or an earlier ask)."""
        if not self._has_checkpoint and self.latest_step() == 0:
            return self.base_model
        return str(CheckpointRef.of(self.entity, self.project, self.name))

    def ref_at(self, step: int) -> str:
        """The checkpoint at ``step`` (``:stepN``; ``:step0`` is the base model)."""
        return str(CheckpointRef.of(self.entity, self.project, self.name, step))

    def ref_for(self, alias: str) -> str:
        """``wandb-artifact:///entity/project/name:alias``: whatever ``promote`` set ``alias`` on
        (a chat model built from it follows every later promotion)."""
        return str(CheckpointRef.of(self.entity, self.project, self.name).named(alias))

    def served_step(self, alias: str = "production") -> int | None:
        """The step ``alias`` serves (0: the base model), None while it is set on none."""
        return served_aliases(self).get(alias)

    def promote(self, step: int, alias: str = "production") -> str:
        """Serve ``alias`` from checkpoint ``step``: a W&B artifact alias when hosted, an alias
        the local backend resolves otherwise. Returns ``ref_for(alias)``. A step that does not
        exist is a ValueError naming the steps that do."""
        step = int(step)
        if step < 0 or (step > 0 and step not in self.checkpoint_steps()):
            steps = self.checkpoint_steps()
            shown = f"{steps[0]}..{steps[-1]}" if steps else "none yet"
            raise ValueError(f"{self!r} has no checkpoint at step {step} (checkpoints: {shown})")
        served_aliases(self).set(alias, step)
        return self.ref_for(alias)

    def restore(self, step: int) -> int:
        """Copy checkpoint ``step`` as the newest, so the next training job continues from it
        (the newer checkpoints stay, servable). Returns the copy's step. Local backend only:
        W&B's training API has no field to choose the checkpoint a job trains on."""
        if self.hosted:
            raise NotImplementedError(
                "restore() needs the local backend: W&B's training API has no field to choose "
                "the checkpoint a job trains on"
            )
        return int(self.client.local_checkpoints.copy(self.id, int(step))["step"])

    def checkpoint_steps(self) -> list[int]:
        """Every checkpoint's step, oldest first."""
        return sorted(c.step for c in self.client.checkpoints.iter(self.id))

    def latest_step(self) -> int:
        """The newest checkpoint's step (0: none yet), asked of the server."""
        page = self.client.checkpoints.list(self.id, limit=1, order="desc")
        step = page.data[0].step if page.data else 0
        self._has_checkpoint = self._has_checkpoint or step > 0
        return step

    @property
    def hosted(self) -> bool:
        """Whether the service is W&B's (datasets go to W&B artifacts, metrics to a W&B run)
        rather than a local backend: a setting (``Settings.local``), or the server's own word
        in ``/v1/system-check``, never a comparison of URLs (proxies and custom hosts exist)."""
        return not self.client.is_local()

    # -- training ----------------------------------------------------------------------------

    def train_rl(
        self,
        groups: Iterable[TrajectoryGroup | dict],
        config: ExperimentalTrainingConfig | dict | None = None,
        *,
        discount: float = 1.0,
    ) -> TrainResult:
        """One RL step on these groups. Zero-variance groups are dropped (with a warning).
        Step rewards, when the turns carry some, are trained as returns (``discount`` a turn:
        see ``rollouts.credit``)."""
        kept, dropped = trainable_groups(groups, discount=discount)
        if dropped:
            log.warning(
                "dropped %d of %d groups with no reward variance", dropped, dropped + len(kept)
            )
        if not kept:
            step = self.latest_step()
            log.warning("no group has reward variance: nothing to train, staying at step %d", step)
            return TrainResult(step, dropped_groups=dropped)
        rewards = [t.reward for g in kept for t in g.trajectories]
        reward = sum(rewards) / len(rewards)  # the reward curve, beside the job's metrics
        result = self._follow(self.submit_rl(kept, config), "RL step", reward)
        result.dropped_groups = dropped
        return result

    def submit_rl(
        self,
        groups: list[TrajectoryGroup],
        config: ExperimentalTrainingConfig | dict | None = None,
    ) -> str:
        """Create the RL job for these groups (as given: no group is dropped) and return its ID
        without waiting; ``wait(job_id)`` follows it. For loops that record the job first."""
        check_trainable_context(groups, config)
        job = self.client.training_jobs.create(
            model_id=self.id, trajectory_groups=groups, experimental_config=config
        )
        return job.id

    def wait(self, job_id: str, label: str = "RL step") -> TrainResult:
        """Follow a job to its end (progress bar, history); its new step and metrics."""
        return self._follow(job_id, label)

    def train_sft(
        self,
        data: Iterable[Trajectory | dict] | str | Path,
        config: SFTTrainingConfig | dict | None = None,
        *,
        dataset_name: str | None = None,
    ) -> TrainResult:
        """SFT on trajectories, train.jsonl rows, a train.jsonl path, or an artifact URL."""
        # a fresh name per upload, as ART does: two trainers must not race on one artifact
        url = self._publish(data, dataset_name or f"{self.name}-sft-data-{uuid.uuid4().hex[:8]}")
        job = self.client.training_jobs.create_sft(
            model_id=self.id, training_data_url=url, config=config
        )
        return self._follow(job.id, "SFT")

    def _publish(self, data: Any, name: str) -> str:
        if isinstance(data, str) and data.startswith(("wandb-artifact:", "file://")):
            return data
        if isinstance(data, str | Path):
            rows = read_json_rows(data)
        else:
            rows = [sft_row(d) if isinstance(d, Trajectory) else d for d in data]
            rows = [r for r in rows if r is not None]
        if self.hosted:
            return self._publish_to_wandb(rows, name)
        return self.client.local_artifacts.publish(
            rows, entity=self.entity, project=self.project, name=name
        )["url"]

    def _publish_to_wandb(self, rows: list[dict], name: str) -> str:  # pragma: no cover - needs W&B
        import tempfile

        wandb = wandb_sdk("publishing an SFT dataset on W&B")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "train.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            artifact = wandb.Artifact(
                name, type="dataset", metadata={"format": "jsonl", "num_rows": len(rows)}
            )
            artifact.add_file(str(path), name="train.jsonl")
            logged = self._run().log_artifact(artifact)
            logged.wait()
        return f"wandb-artifact:///{self.entity}/{self.project}/{name}:{logged.version}"

    def _follow(self, job_id: str, label: str, reward: float | None = None) -> TrainResult:
        metrics = follow_job(self.client, job_id, f"{label} {self.name}", progress=self.progress)
        result = TrainResult(self.latest_step(), metrics, job_id)
        logged = {f"train/{k}": v for k, v in result.metrics.items()}
        if reward is not None:
            logged["train/reward"] = reward
        self.log_metrics(result.step, logged, kind=label)
        return result

    # -- history -----------------------------------------------------------------------------

    def log_metrics(self, step: int, metrics: dict[str, float], *, kind: str = "eval") -> None:
        """Append to the local JSONL history and log to the model's W&B run (online on W&B,
        offline for local training without a W&B key: see ``wandb_serverless.wandb_run``)."""
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        with self.history_path.open("a") as handle:
            handle.write(
                json.dumps({"time": time.time(), "step": step, "kind": kind, **metrics}) + "\n"
            )
        run = self._run()
        if run is not None:
            run.log(metrics, step=step)

    def _run(self) -> Any:
        """The model's W&B run (``wandb_run``), opened once; None: JSONL only."""
        if self._wandb_run is None:
            self._wandb_run, self._owns_run = open_run(
                hosted=self.hosted,
                service_key=self.client.settings.require_api_key(),
                entity=self.entity,
                project=self.project,
                run_id=self.run_id or self.name,
                directory=self.history_path.parent,
            )
            if self._owns_run:  # a process that trains model after model keeps no run open
                self._run_finalizer = weakref.finalize(self, self._wandb_run.finish)
                self._run_finalizer.atexit = False  # wandb finishes its runs at exit itself
        return self._wandb_run

    def finish_run(self) -> None:
        """Close the model's W&B run (an offline run is then complete for ``wandb sync``);
        the next metrics open a new one. Also done by wandb itself at exit."""
        if self._run_finalizer is not None:
            self._run_finalizer()  # runs once: finish now, never again at collection
            self._run_finalizer = None
        self._wandb_run = None

    def history(self) -> list[dict[str, Any]]:
        if not self.history_path.exists():
            return []
        return [json.loads(line) for line in self.history_path.read_text().splitlines() if line]


def follow_job(
    client: Client, job_id: str, label: str = "training", *, progress: bool = True
) -> dict[str, float]:
    """Follow a job's events with a progress bar; return its gradient-step metrics averaged
    over the job's steps, as ART does, with ``num_gradient_steps`` (how many there were; a
    step's own ``step`` counter is not a metric and is left out).

    ``training_failed`` raises :class:`~wandb_serverless.api.TrainingJobFailedError`.
    """
    steps: list[dict[str, float]] = []
    started = time.monotonic()
    bar = None
    try:
        for event in client.training_jobs.events.follow(job_id, poll_interval=0.25):
            if event.type == "training_started":
                total = int(event.data.get("num_sequences") or 1)
                bar = tqdm(total=total, desc=label, disable=not progress, leave=False)
            elif event.type == "gradient_step":
                steps.append({k: float(v) for k, v in event.data.items()})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        {k: round(v, 4) for k, v in steps[-1].items() if k in ("loss", "reward")}
                    )
    finally:
        if bar is not None:
            bar.close()
    keys = {k for step in steps for k in step} - {"step"}
    metrics = {
        k: sum(s[k] for s in steps if k in s) / sum(1 for s in steps if k in s) for k in keys
    }
    metrics["num_gradient_steps"] = float(len(steps))
    metrics["time/step_trainer_s"] = time.monotonic() - started
    return metrics


def plot_reward_curve(
    points: list[tuple[int, float]], path: str | Path, *, title: str = "held-out reward"
) -> Path:
    """A small line chart (PNG) of reward per step, drawn with Pillow."""
    from PIL import Image, ImageDraw

    width, height, pad = 640, 400, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    steps = [s for s, _ in points] or [0]
    lo, hi = min(steps), max(max(steps), min(steps) + 1)

    def xy(step: float, reward: float) -> tuple[float, float]:
        x = pad + (step - lo) / (hi - lo) * (width - 2 * pad)
        y = height - pad - max(0.0, min(1.0, reward)) * (height - 2 * pad)
        return x, y

    for level in (0.0, 0.25, 0.5, 0.75, 1.0):
        _, y = xy(lo, level)
        draw.line([pad, y, width - pad, y], fill=(220, 220, 220))
        draw.text((8, y - 6), f"{level:.2f}", fill="black")
    coords = [xy(s, r) for s, r in points]
    if len(coords) > 1:
        draw.line(coords, fill=(30, 90, 200), width=3)
    for x, y in coords:
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(30, 90, 200))
    for step in sorted(set(steps)):
        x, _ = xy(step, 0)
        draw.text((x - 4, height - pad + 8), str(step), fill="black")
    draw.text((pad, 15), f"{title} (x: training step)", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
