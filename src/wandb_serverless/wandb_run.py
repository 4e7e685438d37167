"""The model's W&B run: training metrics and the reward curve.

On W&B the run is online (``wandb.init(entity, project, id=run_id, resume="allow")`` with the
key passed explicitly). Local training logs too: to an offline run in the history directory
(``wandb sync <dir>/wandb/offline-run-*`` uploads it later; one run per ``TrainableModel``
object, grouped under the model's name, finished when the object goes) unless a W&B key other
than the local backend's is set (``WANDB_API_KEY``): then online. ``WANDB_MODE`` (``offline``,
``disabled``) overrides both, as everywhere in W&B. Without the ``wandb`` SDK, local training
keeps its JSONL history only (said once); hosted training needs the SDK.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

from wandb_serverless.config import ENV_API_KEY, wandb_sdk

log = logging.getLogger(__name__)
_said_no_sdk = False


def run_mode(*, hosted: bool, service_key: str) -> tuple[str | None, str | None]:
    """``(mode, key)`` for ``wandb.init``: W&B's own ``WANDB_MODE`` when set (mode None)."""
    if hosted:
        return (None if os.environ.get("WANDB_MODE") else "online"), service_key
    wandb_key = os.environ.get(ENV_API_KEY, "").strip()
    if os.environ.get("WANDB_MODE"):
        return None, wandb_key or None
    if wandb_key and wandb_key != service_key:
        return "online", wandb_key
    return "offline", None


def open_run(
    *,
    hosted: bool,
    service_key: str,
    entity: str,
    project: str,
    run_id: str,
    directory: Path,
) -> tuple[Any | None, bool]:
    """The ``wandb`` run to log the model's metrics to (None: local without the SDK, JSONL
    only), and whether it was opened here (else it is the user's own ``wandb.run``)."""
    global _said_no_sdk
    try:
        wandb = wandb_sdk("logging metrics to the model's W&B run")
    except ImportError:
        if hosted:
            raise
        if not _said_no_sdk:
            _said_no_sdk = True
            log.info("the wandb SDK is not installed: metrics go to the JSONL history only")
        return None, False
    if hosted and wandb.run is not None:  # the user's own run, as before
        return wandb.run, False
    mode, key = run_mode(hosted=hosted, service_key=service_key)
    options: dict[str, Any] = {"entity": entity, "project": project, "id": run_id}
    if hosted:
        options["resume"] = "allow"
    else:  # each TrainableModel its own run (W&B refuses one ID twice at a time), grouped
        directory.mkdir(parents=True, exist_ok=True)
        options.update(
            id=f"{run_id}-{uuid.uuid4().hex[:8]}",
            group=run_id,
            dir=str(directory),
            reinit="create_new",
            job_type="local-training",
        )
    if mode is not None:
        options["mode"] = mode
    settings: dict[str, Any] = {"api_key": key} if key else {}
    if not hosted:  # a library's run: stdout stays the program's (CLIs print JSON there)
        settings.update(silent=True, console="off")
    run = wandb.init(**options, settings=wandb.Settings(**settings))
    if not hosted and run.settings.mode == "offline":
        log.info(
            "metrics go to the offline W&B run %s (`wandb sync` uploads it)", Path(run.dir).parent
        )
    return run, True
