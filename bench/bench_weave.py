"""Weave as a training source, at scale: reading 10,000 exported rollouts back, and what the
export costs an agent per rollout.

Both run the real weave client (``RemoteHTTPTraceServer``, as ``weave.init`` builds it) against
the tests' loopback trace server in its own process. Reading: ``WeaveRollouts.groups()`` over
10,000 two-turn rollouts in pages of 500 roots, timed, with the largest single response, so
memory is bounded by a page, not the project. Export cost: the hook-cost method, per-round
pairs of ``with rollout(...)`` recording two turns, with ``weave=`` the client and without,
in the agent's thread (the client sends in the background); medians over rounds.

    python bench/bench_weave.py          # rewrites its section of bench/RESULTS.md
"""

from __future__ import annotations

import multiprocessing
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support.weave_fake import FakeTraceServer, HTTPTraceServer, http_weave_client  # noqa: E402

from wandb_serverless.rollouts import LLMCall, rollout  # noqa: E402
from wandb_serverless.rollouts.recorder import make_choice  # noqa: E402
from wandb_serverless.rollouts.weave_source import WeaveRollouts  # noqa: E402

TITLE = "Weave as a training source (`python bench/bench_weave.py`)"
ROLLOUTS = 10_000
PAGE = 500
ROUNDS = 30
PER_ROUND = 50
TOKENS = 24  # per model turn


def _choice(text: str, calls: list | None = None) -> dict:
    ids = list(range(100, 100 + TOKENS))
    logprobs = {
        "content": [
            {"token": f"token_id:{i}", "logprob": -0.5, "bytes": [1], "top_logprobs": []}
            for i in ids
        ]
    }
    body = {"content": text, **({"tool_calls": calls} if calls else {})}
    return make_choice(
        body,
        finish_reason="tool_calls" if calls else "stop",
        logprobs=logprobs,
        token_ids=ids,
        prompt_token_ids=list(range(300)),
    )


CALL = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
FIRST, SECOND = _choice("", [CALL]), _choice("It is 21.5 degrees.")
USER = {"role": "user", "content": "What is the temperature in Paris?"}
TOOL = {"role": "tool", "tool_call_id": "c1", "content": "21.5"}


def record(client, group: str, reward: float) -> None:
    with rollout(group=group, weave=client) as run:
        run.add_call(LLMCall([USER], None, FIRST))
        run.add_call(LLMCall([USER, FIRST["message"], TOOL], None, SECOND))
        run.reward = reward


def _serve(ready, url_box, stop) -> None:
    server = FakeTraceServer()
    with HTTPTraceServer(server) as trace:
        url_box.put(trace.url)
        ready.set()
        stop.wait()


class Sizes:
    """Wraps the client's server to note each query's response size."""

    def __init__(self, server) -> None:
        self.server, self.largest, self.requests = server, 0, 0

    def __getattr__(self, name):
        return getattr(self.server, name)

    def calls_query_stream(self, req):
        calls = list(self.server.calls_query_stream(req))
        size = sum(len(c.model_dump_json()) for c in calls)
        self.largest, self.requests = max(self.largest, size), self.requests + 1
        return iter(calls)


def reading(url: str) -> dict[str, float]:
    client = http_weave_client(url, project="read")  # its own project: only these rollouts
    started = time.perf_counter()
    for i in range(ROLLOUTS):
        record(client, f"g{i // 8}", float(i % 2))
    client.flush()
    export_s = time.perf_counter() - started
    print(f"{ROLLOUTS} rollouts exported in {export_s:.0f} s", flush=True)
    sizes = Sizes(client.server)
    client.server = sizes
    started = time.perf_counter()
    groups = WeaveRollouts(client=client, page_size=PAGE).groups()
    read_s = time.perf_counter() - started
    total = sum(len(g.trajectories) for g in groups)
    assert total == ROLLOUTS, total
    client.server = sizes.server
    return {
        "rollouts_read": float(total),
        "read_s": read_s,
        "read_rollouts_per_s": total / read_s,
        "read_requests": float(sizes.requests),
        "largest_response_mb": sizes.largest / 1e6,
        "export_and_flush_rollouts_per_s": ROLLOUTS / export_s,
    }


def export_cost(url: str) -> dict[str, float]:
    client = http_weave_client(url, project="cost")

    def burst(weave) -> float:
        started = time.perf_counter()
        for _ in range(PER_ROUND):
            record(weave, "cost", 1.0)
        return (time.perf_counter() - started) / PER_ROUND * 1e6

    for _ in range(3):
        burst(client), burst(None)
    on, off = [], []
    for round_ in range(ROUNDS):
        order = [(client, on), (None, off)]
        for weave, into in order if round_ % 2 else reversed(order):
            into.append(burst(weave))
        client.flush()  # the background sends do not pile into the next round
    cost = [a - b for a, b in zip(on, off, strict=True)]
    return {
        "rollout_us_weave_off": statistics.median(off),
        "rollout_us_weave_on": statistics.median(on),
        "export_cost_us": statistics.median(cost),
        "export_cost_ratio": statistics.median(a / b for a, b in zip(on, off, strict=True)),
    }


def run() -> dict[str, float]:
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    url_box: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ready, url_box, stop), daemon=True)
    server.start()
    ready.wait(60)
    url = url_box.get(timeout=10)
    try:
        started = time.perf_counter()
        cost = export_cost(url)
        print(f"export cost measured in {time.perf_counter() - started:.0f} s", flush=True)
        return {**cost, **reading(url)}
    finally:
        stop.set()
        server.join(timeout=10)


def write(results: dict[str, float]) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = [
        f"## {TITLE}",
        "",
        f"Run {time.strftime('%Y-%m-%d')}: {ROLLOUTS:,} two-turn rollouts ({TOKENS} tokens a "
        f"turn, 300-token prompts, logprobs and token ids), read in pages of {PAGE} roots; "
        f"export cost per rollout in the agent's thread as medians of {ROUNDS} paired rounds "
        f"of {PER_ROUND}. The server is the tests' Python fake in its own process, so read_s "
        "includes its queries (each scans the whole project), not W&B's.",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {k} | {v:.3f} |" for k, v in results.items()),
    ]
    block = "\n".join(lines) + "\n"
    pattern = re.compile(r"^## Weave as a training source.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block
    )
    path.write_text(text)
    print(block)


if __name__ == "__main__":
    write(run())
