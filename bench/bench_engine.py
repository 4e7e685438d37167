"""Local engine throughput vs raw transformers ``model.generate`` on the same model and prompt.

Targets (issue 3): single stream >= 0.95x raw generate; 8 concurrent >= 3.5x single;
16 concurrent >= 5x single; constrained decoding <= 15% slower than unconstrained; TTFT reported.
"""

from __future__ import annotations

import concurrent.futures
import statistics
import tempfile
import time
from pathlib import Path

import openai
import torch

from wandb_serverless.local import LocalBackend

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "models"
TOKENS = 64
ROUNDS = 7
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
SCHEMA = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}


def raw_generate_tps(backend: LocalBackend) -> float:
    loaded = backend.app.state.backend.loaded
    tok, model = loaded.tokenizer, loaded.model
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False)
        return TOKENS / (time.perf_counter() - started)


def server_tps(client: openai.OpenAI, concurrency: int, **extra) -> float:
    def one(_: int) -> int:
        reply = client.chat.completions.create(
            model="default",
            messages=PROMPT,
            max_tokens=TOKENS,
            temperature=0,
            extra_body={"ignore_eos": True, **extra},
        )
        return reply.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        tokens = sum(pool.map(one, range(concurrency)))
        return tokens / (time.perf_counter() - started)


def ttft_ms(client: openai.OpenAI) -> float:
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        # closed on break: an abandoned stream, finalised by the GC inside httpcore's pool
        # lock on this thread's next request, deadlocks (seen once in `make bench`)
        with client.chat.completions.create(
            model="default", messages=PROMPT, max_tokens=8, stream=True
        ) as stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    samples.append(time.perf_counter() - started)
                    break
    return statistics.median(samples) * 1000


def constrained_tps(client: openai.OpenAI, response_format: dict | None, seed: int) -> float:
    kwargs = (
        {"response_format": response_format}
        if response_format
        else {"extra_body": {"ignore_eos": True}}
    )
    started = time.perf_counter()
    reply = client.chat.completions.create(
        model="default",
        messages=PROMPT,
        max_tokens=TOKENS,
        temperature=0.7,
        seed=seed,
        **kwargs,
    )
    return reply.usage.completion_tokens / (time.perf_counter() - started)


def run() -> dict[str, float]:
    torch.set_num_threads(torch.get_num_threads())
    with (
        tempfile.TemporaryDirectory() as data,
        LocalBackend.start(data_dir=data, model_cache_dir=CACHE) as backend,
    ):
        client = openai.OpenAI(base_url=backend.base_url, api_key=backend.api_key, max_retries=0)
        server_tps(client, 1)  # warm up
        schema_format = {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}
        # Interleaved rounds, medians: this VM's speed drifts by 2x over minutes, so every
        # ratio compares measurements taken side by side.
        cases = {
            "raw": lambda seed: raw_generate_tps(backend),
            "single": lambda seed: server_tps(client, 1),
            "eight": lambda seed: server_tps(client, 8),
            "sixteen": lambda seed: server_tps(client, 16),
            "free": lambda seed: constrained_tps(client, None, seed),
            "schema": lambda seed: constrained_tps(client, schema_format, seed),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for seed in range(ROUNDS):
            for name, measure in cases.items():
                samples[name].append(measure(seed))
        raw, single, eight, sixteen, free, schema = (
            statistics.median(samples[name]) for name in cases
        )

        def paired(a: str, b: str) -> float:
            """Median over rounds of a/b measured side by side (cancels the drift between)."""
            return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))

        return {
            "raw_generate_tok_s": raw,
            "single_stream_tok_s": single,
            "single_vs_raw_ratio": paired("single", "raw"),
            "concurrent8_tok_s": eight,
            "concurrent8_vs_single": paired("eight", "single"),
            "concurrent16_tok_s": sixteen,
            "concurrent16_vs_single": paired("sixteen", "single"),
            "unconstrained_tok_s": free,
            "json_schema_tok_s": schema,
            "constrained_slowdown": 1 - paired("schema", "free"),
            "ttft_ms": ttft_ms(client),
        }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:28s} {value:10.3f}")
