"""Timing several cases side by side: each round runs every case once, in a fresh order."""

from __future__ import annotations

import random
import time
from collections.abc import Callable


def interleaved(
    cases: dict[str, Callable[[], object]], rounds: int, warmup: int = 20
) -> dict[str, list[float]]:
    """Seconds each case took, a sample a round (sample i of every case from round i: pair them
    to cancel the machine's drift between rounds). The order is shuffled every round: a call
    right after one of its own kind runs with warmer caches, and a fixed order handed that
    advantage to the same cases every round (the trace hooks' cost once measured -83 µs so)."""
    for fn in cases.values():  # connections and imports warmed up
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    order, shuffle = list(cases), random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            started = time.perf_counter()
            cases[name]()
            samples[name].append(time.perf_counter() - started)
    return samples
