"""What every command shares: exit codes, the API client, JSON output, API options."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wandb_serverless.api import Client

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def client(args: argparse.Namespace) -> Client:
    from wandb_serverless.api import Client

    return Client(api_key=args.api_key, base_url=args.base_url, max_retries=2)


def print_json(value: Any) -> None:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    print(json.dumps(value, ensure_ascii=False))


def api_command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A command that talks to the API (its base URL and key)."""
    command = sub.add_parser(name, help=help, description=help)
    command.add_argument(
        "--base-url",
        help="API base URL (default: WANDB_TRAINING_BASE_URL, else WANDB_SERVERLESS_BASE_URL, "
        "else W&B)",
    )
    command.add_argument("--api-key", help="API key (default: WANDB_API_KEY)")
    return command


def model_arguments(command: argparse.ArgumentParser) -> None:
    """Which model a training command trains."""
    command.add_argument("--model-id", help="the model's ID (local backend: looked up)")
    command.add_argument("--name", help="the model's name (with --project and --base-model)")
    command.add_argument("--project", help="the model's project")
    command.add_argument("--base-model", help="the model's base model")
    command.add_argument("--entity", help="the model's entity (default: WANDB_ENTITY)")
