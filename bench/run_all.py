"""Run every benchmark and rewrite bench/RESULTS.md (by hand: `make bench`; never part of tests)."""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import bench_adapter_overhead  # noqa: E402
import bench_engine  # noqa: E402
import bench_hooks  # noqa: E402
import bench_learning  # noqa: E402
import bench_rl_step  # noqa: E402

TARGETS = {
    # ours <= 0.5x theirs, as a margin in µs (a ratio is meaningless once an overhead is < 0)
    "invoke_overhead_margin_us": ("<= 0", lambda v: v <= 0),
    "stream_overhead_margin_us": ("<= 0", lambda v: v <= 0),
    "llamaindex_chat_overhead_margin_us": ("<= 0", lambda v: v <= 0),
    "single_vs_raw_ratio": (">= 0.95", lambda v: v >= 0.95),
    "concurrent8_vs_single": (">= 3.5", lambda v: v >= 3.5),
    "concurrent16_vs_single": (">= 5", lambda v: v >= 5),
    "constrained_slowdown": ("<= 0.15", lambda v: v <= 0.15),
    "hook_cost_us": ("<= 100", lambda v: v <= 100),
    "rl_step_vs_raw_peft": ("<= 1.2", lambda v: v <= 1.2),
    "hook_cost_fraction": ("<= 0.03", lambda v: v <= 0.03),
    "concurrent_throughput_ratio": (">= 0.8", lambda v: v >= 0.8),
    "concurrent_rollouts_lost": ("0", lambda v: v == 0),
}


def main() -> None:
    sections = {
        "Adapter overhead (µs, medians of 400 interleaved rounds)": bench_adapter_overhead.run(),
        "Trace hooks (µs, instant loopback server)": bench_hooks.run(),
        "Local engine (SmolLM2-135M fp32, 64 tokens)": bench_engine.run(),
        "RL step (4 groups x 4 trajectories x ~250 tokens)": bench_rl_step.run(),
    }
    lines = [
        "# Benchmark results",
        "",
        f"Run {datetime.date.today().isoformat()} on {os.cpu_count()} cores with `make bench`.",
        "",
    ]
    for title, results in sections.items():
        lines += [
            f"## {title}",
            "",
            "| metric | value | target | met |",
            "| --- | --- | --- | --- |",
        ]
        for key, value in results.items():
            target, check = TARGETS.get(key, ("", None))
            met = "" if check is None else ("yes" if check(value) else "**no**")
            lines.append(f"| {key} | {value:.3f} | {target} | {met} |")
        lines.append("")
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines))
    # the learning runs (minutes each) append their own section, and the README's demo table
    bench_learning.main()


if __name__ == "__main__":
    main()
