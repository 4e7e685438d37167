"""Request and response types of the W&B Serverless Training and Inference HTTP APIs.

Mirrors the published OpenAPI (see docs/api.md). Responses tolerate extra keys, since servers may
add fields; requests forbid unknown keys except where the spec says servers accept them.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from wandb_serverless.trajectory import TrajectoryGroup

T = TypeVar("T")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- models ---------------------------------------------------------------------------------


class ModelCreate(_Request):
    project: str
    name: str
    base_model: str
    entity: str | None = None
    return_existing: bool = False


class ModelResponse(_Response):
    id: str
    entity: str
    project: str
    name: str
    base_model: str
    run_id: str | None = None


class RegisteredModel(ModelResponse):
    """A row of the local backend's model list (its extension of the API)."""

    latest_step: int = 0


class DeleteModelResponse(_Response):
    model_id: str
    deleted_checkpoints: int
    deleted_run: bool


# --- checkpoints ----------------------------------------------------------------------------


class CheckpointResponse(_Response):
    id: str
    step: int
    metrics: dict[str, float] = Field(default_factory=dict)


class DeleteCheckpointsRequest(_Request):
    steps: list[Annotated[int, Field(ge=0, lt=2**63)]]


class DeleteCheckpointsResponse(_Response):
    deleted_count: int
    not_found_steps: list[int] = Field(default_factory=list)


class Page(_Response, Generic[T]):
    """The paginated envelope: ``after`` (exclusive) pages forward while ``has_more``."""

    object: str = "list"
    data: list[T]
    first_id: str | None = ""  # null on an empty page (OpenAI's and ART's servers)
    last_id: str | None = ""
    has_more: bool


# --- logging --------------------------------------------------------------------------------


class LogRequest(BaseModel):
    """Extra keys (ART sends ``model_id``) are accepted."""

    model_config = ConfigDict(extra="allow")

    split: str
    trajectory_groups: list[TrajectoryGroup]


# --- training jobs --------------------------------------------------------------------------


class ExperimentalTrainingConfig(_Request):
    """Every field is optional; the server applies its defaults to the unset ones."""

    advantage_balance: float | None = None
    allow_training_without_logprobs: bool | None = None
    epsilon: float | None = None
    epsilon_high: float | None = None
    importance_sampling_level: (
        Literal["token", "sequence", "average", "geometric_average"] | None
    ) = None
    kimi_k2_tau: float | None = None
    kl_penalty_coef: float | None = None
    kl_penalty_reference_step: int | None = None
    kl_penalty_source: Literal["current_learner", "sample"] | None = None
    kl_penalty_step_lag: int | None = None
    kl_ref_adapter_path: str | None = None
    learning_rate: float | None = None
    logprob_calculation_chunk_size: int | None = None
    loss_fn: Literal["cispo", "ppo"] | None = None
    mask_prob_ratio: bool | None = None
    max_negative_advantage_importance_sampling_weight: float | None = None
    normalize_advantages: bool | None = None
    num_trajectories_learning_rate_multiplier_power: float | None = None
    packed_sequence_length: int | None = None
    plot_tensors: bool | None = None
    ppo: bool | None = None
    precalculate_logprobs: bool | None = None
    scale_learning_rate_by_reward_std_dev: bool | None = None
    scale_rewards: bool | None = None
    truncated_importance_sampling: float | None = None


class CreateTrainingJob(_Request):
    """An RL job: trajectory groups travel inline."""

    model_id: str
    trajectory_groups: list[TrajectoryGroup]
    experimental_config: ExperimentalTrainingConfig | None = None


class SFTTrainingConfig(BaseModel):
    """Seed 004 does not forbid extra keys: a server may accept config keys newer than this
    client (the local backend ignores unknown ones and says so in the job's events)."""

    model_config = ConfigDict(extra="allow")

    batch_size: int | Literal["auto"] | None = None
    learning_rate: float | list[float] | None = None
    assistant_turns: Literal["all", "last"] | None = None
    """Train on every assistant turn of a row (ART's default) or only on the last one."""
    metric_logging: dict[str, Any] | None = None


class CreateSFTTrainingJob(_Request):
    model_id: str
    training_data_url: str
    config: SFTTrainingConfig | None = None
    experimental_config: dict[str, Any] | None = None


class TrainingJobResponse(_Response):
    id: str


#: The event types known today; others are kept as they come (a newer server may add some).
TrainingJobEventType = Literal[
    "training_started", "gradient_step", "training_ended", "training_failed"
]
TERMINAL_EVENTS = frozenset({"training_ended", "training_failed"})


class TrainingJobEvent(_Response):
    id: str
    type: str
    """One of :data:`TrainingJobEventType`, or a newer type this client does not know yet."""
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


# --- errors and health ----------------------------------------------------------------------


class ValidationErrorItem(_Response):
    loc: list[str | int]
    msg: str
    type: str


class HTTPValidationError(_Response):
    detail: list[ValidationErrorItem]


class SystemCheck(_Response):
    """``api`` is always true; the service adds ``database`` and queue checks."""

    api: bool = True
    database: bool | None = None


class ModelInfo(_Response):
    """An entry of ``GET /v1/models`` (OpenAI shape)."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "system"
    root: str | None = None
