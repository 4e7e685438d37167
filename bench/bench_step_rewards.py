"""Step rewards vs the run's reward alone, same budget, three seeds: the LlamaIndex agent of
`examples/llamaindex_rl.py`, whose first turn (the tool call) spoils the run when it picks the
wrong tool or city. `--credit run` trains on the answer's reward; `--credit step` also rewards
the tool call on its own, and training gives each turn its return (`rollouts.credit`). Both
are judged on the same held-out reward (the answer's). Writes its section of bench/RESULTS.md.

    python bench/bench_step_rewards.py [--steps 3] [--seeds 0 1 2]

Never part of `make test` (minutes per run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learning import TABLE_HEAD, row, run

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SCRIPT = "examples/llamaindex_rl.py"
START, END = "<!-- step-rewards:start -->", "<!-- step-rewards:end -->"


def section(results: dict[str, list[tuple[int, dict]]], steps: int) -> str:
    lines = [
        START,
        "## Step rewards vs the run's reward (`python bench/bench_step_rewards.py`)",
        "",
        f"Run {time.strftime('%Y-%m-%d')}: `{SCRIPT}` defaults, {steps} RL steps a run, one run",
        "at a time. `run`: the answer's reward only; `step`: the first turn (the tool call) also",
        "rewarded 1/0 for the right tool and city, each turn trained on its return (discount 1)",
        "in per-turn groups. Held-out reward: the answer's, 2 seeded samples for 12 cities.",
        "",
        *TABLE_HEAD,
    ]
    for credit, runs in results.items():
        lines += [row(f"credit {credit}", seed, result) for seed, result in runs]
    lines.append("")
    for credit, runs in results.items():
        final = [result["curve"][-1][1] for _, result in runs]
        auc = [sum(r for _, r in result["curve"]) / len(result["curve"]) for _, result in runs]
        lines.append(
            f"- credit {credit}: mean held-out after {steps} steps {sum(final) / len(final):.2f}"
            f", mean over the curve {sum(auc) / len(auc):.2f}"
        )
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results: dict[str, list[tuple[int, dict]]] = {"run": [], "step": []}
    for seed in args.seeds:
        for credit in results:
            extra = ["--steps", str(args.steps), "--credit", credit]
            results[credit].append((seed, run(SCRIPT, seed, extra)))
    block = section(results, args.steps)
    text = RESULTS.read_text()
    if START in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    print(block)


if __name__ == "__main__":
    main()
