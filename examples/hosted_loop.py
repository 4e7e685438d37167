"""The demo's RL loop against the hosted W&B services: the only difference is configuration.

    WANDB_API_KEY=... WANDB_ENTITY=my-team python examples/hosted_loop.py

Rollouts run on W&B Inference / Serverless Training inference, the RL job on W&B Serverless
Training, and the new checkpoint is served back as `wandb-artifact:///my-team/demo/...:latest`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from demo import parse_args, train_loop

from wandb_serverless.api import Client

BASE_MODEL = "OpenPipe/Qwen3-14B-Instruct"


class HostedBackend:
    """What train_loop needs from a backend, pointing at W&B."""

    def __init__(self) -> None:
        self.client_ = Client()
        self.base_url = self.client_.base_url
        self.api_key = self.client_.settings.require_api_key()
        self.model_id = BASE_MODEL

    def client(self) -> Client:
        return self.client_


def main() -> int:
    if not os.environ.get("WANDB_API_KEY"):
        print("set WANDB_API_KEY (and WANDB_ENTITY) to run against W&B", file=sys.stderr)
        return 2
    args: argparse.Namespace = parse_args()
    asyncio.run(train_loop(HostedBackend(), args, time.monotonic()))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
