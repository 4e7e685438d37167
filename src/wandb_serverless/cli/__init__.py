"""``wandb-serverless``: serve the local backend, and manage models, checkpoints, jobs,
rollouts and training. One module per command group, each with its ``add_commands``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from wandb_serverless.cli import manage, rollouts, serve, train
from wandb_serverless.cli.common import EXIT_ERROR, EXIT_OK
from wandb_serverless.config import ENV_API_KEY, MissingAPIKeyError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wandb-serverless",
        description="Run agents on W&B Inference and train them with W&B Serverless Training.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    for group in (serve, manage, rollouts, train):
        group.add_commands(commands)
    return parser


def _reader_gone() -> None:
    """Whoever read stdout closed it: what is left goes nowhere (no error again at exit)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # `| head`: the reader has what it wanted; stop quietly, no error
        _reader_gone()
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_ERROR
    except MissingAPIKeyError:
        print(
            f"error: no API key: pass --api-key KEY or set {ENV_API_KEY} (for a local backend: "
            "the key `wandb-serverless serve` printed, or the one you gave it)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except Exception as exc:  # one clear line, never a stack trace, for scripts and humans
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _reader_gone()
