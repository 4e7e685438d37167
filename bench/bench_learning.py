"""Does the loop learn, on every seed? Runs the main demo (and the LlamaIndex multi-turn
scenario) on several seeds, each in its own process as a user would, and writes the learning
section of bench/RESULTS.md and the README's demo table from what they print.

    python bench/bench_learning.py                 # defaults, seeds 0 1 2 (what `make bench` runs)
    python bench/bench_learning.py --sweep         # + the recipe sweep (learning rates)

Never part of `make test` (minutes per run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEEDS = (0, 1, 2)
SCENARIOS = {
    "demo": ("examples/demo.py", "LangGraph weather agent (`make demo`)"),
    "llamaindex": ("examples/llamaindex_rl.py", "LlamaIndex FunctionAgent, two tools, two turns"),
}
RESET = "WANDB_SERVERLESS_RESET_OPTIMIZER"
SWEEP = {  # label -> (scenario, extra arguments of its script, environment)
    "lr 5e-4 (the backend's)": ("demo", ["--lr", "0"], {}),
    # the old recipe: a fresh AdamW per RL job (every step a sign-gradient step of size lr)
    "lr 1e-3, fresh optimizer per step": ("demo", ["--lr", "1e-3"], {RESET: "1"}),
    "lr 5e-4 (the backend's), LlamaIndex": ("llamaindex", ["--lr", "0"], {}),
    "T=0.7, lr 5e-4 (the first recipe)": ("llamaindex", ["--temperature", "0.7", "--lr", "0"], {}),
}
START, END = "<!-- learning:start -->", "<!-- learning:end -->"


def run(script: str, seed: int, extra: list[str], env: dict[str, str] | None = None) -> dict:
    """One run in a fresh process; its summary JSON (curve, steps, seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        command = [sys.executable, str(ROOT / script), "--seed", str(seed), "--out", tmp]
        command += ["--summary", str(summary), *extra]
        started = time.monotonic()
        environment = {k: v for k, v in os.environ.items() if k != RESET} | (env or {})
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=environment)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
            )
        result = json.loads(summary.read_text())
        result["wall_s"] = time.monotonic() - started
        print(f"{script} seed {seed} {' '.join(extra)}: {done.stdout.strip().splitlines()[-1]}")
        return result


def row(label: str, seed: int, result: dict) -> str:
    curve = [reward for _, reward in result["curve"]]
    best = max(curve)
    best_step = curve.index(best)
    served_step, served = result.get("served") or (None, None)
    serving = "" if served is None else f"{served:.2f} (step {served_step})"
    return (
        f"| {label} | {seed} | {curve[0]:.2f} | {best:.2f} (step {best_step}) | {curve[-1]:.2f} "
        f"| {serving} | {' → '.join(f'{r:.2f}' for r in curve)} | {result['wall_s']:.0f} s |"
    )


TABLE_HEAD = [
    "| settings | seed | baseline | best | final | served | held-out reward per step | time |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
]


def subsections(results: dict, sweep: dict) -> dict[str, list[str]]:
    """Title -> table lines; a run of some scenarios replaces only their subsections."""
    out = {}
    for name, runs in results.items():
        script, title = SCENARIOS[name]
        out[f"### {title}: `{script}`, defaults"] = [
            *TABLE_HEAD,
            *(row("defaults", seed, result) for seed, result in runs),
        ]
    for name in SCENARIOS:
        rows = [
            row(label, seed, result)
            for label, runs in sweep.items()
            if SWEEP[label][0] == name
            for seed, result in runs
        ]
        if rows:
            out[f"### Recipe sweep, `{SCENARIOS[name][0]}`"] = [*TABLE_HEAD, *rows]
    return out


INTRO = [
    "## Learning (`python bench/bench_learning.py`)",
    "",
    "Each run in its own process, one at a time, on this machine's cores, through the library's",
    "learning loop (`wandb_serverless.learning`). Held-out reward of the newest checkpoint, after",
    "each RL step, on prompts never trained on: demo, greedy answers for 24 cities; LlamaIndex,",
    "2 seeded samples at the agent's temperature (T=1.0) for 12 cities. Each table says when it",
    "was run.",
]


def demo_table(runs: list[tuple[int, dict]]) -> list[str]:
    """The README's table: every step of seed 0, then one line per seed."""
    seed, first = runs[0]
    lines = [
        START,
        f"Measured by `python bench/bench_learning.py` on {os.cpu_count()} cores "
        f"({time.strftime('%Y-%m-%d')}), `make demo` defaults, seed {seed}:",
        "",
        "| step | train reward (sampled rollouts) | trainable groups | held-out reward, newest checkpoint (greedy, 24 cities) | served as `:production` | time |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| 0 | | | {first['curve'][0][1]:.2f} | step 0 | |",
    ]
    for step in first["steps"]:
        lines.append(
            f"| {step['step']} | {step['train_reward']:.2f} | "
            f"{step['trainable_groups']}/{step['groups']} | {step['held_out']:.2f} | "
            f"step {step['served_step']} ({step['decision']}) | {step['elapsed_s']:.0f} s |"
        )
    lines += ["", "Every seed (baseline → final, best step, served, whole run):", ""]
    for seed, result in runs:
        curve = [r for _, r in result["curve"]]
        served_step, served = result.get("served") or (None, None)
        serving = "" if served is None else f", serving step {served_step} ({served:.2f})"
        lines.append(
            f"- seed {seed}: {curve[0]:.2f} → {curve[-1]:.2f} (best {max(curve):.2f} at step "
            f"{curve.index(max(curve))}{serving}), {result['wall_s']:.0f} s"
        )
    lines.append(END)
    return lines


def replace_block(text: str, start: str, end: str, block: str) -> str:
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"markers {start} ... {end} are missing")
    return pattern.sub(lambda _: block, text)


def write(results: dict, sweep: dict) -> None:
    results_md = HERE / "RESULTS.md"
    text = results_md.read_text() if results_md.exists() else "# Benchmark results\n"
    match = re.search(r"## Learning.*?(?=\n## |\Z)", text, flags=re.S)
    learning = match.group(0) if match else ""
    sections = learning[learning.index("\n### ") :] if "\n### " in learning else ""
    learning = "\n".join(INTRO) + "\n" + sections  # the intro is always this script's
    stamp = f"Run {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores."
    for title, lines in subsections(results, sweep).items():
        block = "\n".join([title, "", stamp, "", *lines]) + "\n"
        pattern = re.compile(re.escape(title) + r".*?(?=\n### |\Z)", re.S)
        if pattern.search(learning):
            learning = pattern.sub(lambda _, b=block: b.rstrip("\n"), learning)
        else:
            learning = learning.rstrip("\n") + "\n\n" + block
    learning = re.sub(r"\n+(?=### )", "\n\n", learning)  # one blank line before each table
    if match:
        text = text[: match.start()] + learning.rstrip("\n") + "\n" + text[match.end() :]
    else:
        text = text.rstrip("\n") + "\n\n" + learning
    results_md.write_text(text)
    if "demo" in results:
        readme = ROOT / "README.md"
        readme.write_text(
            replace_block(readme.read_text(), START, END, "\n".join(demo_table(results["demo"])))
        )


def main() -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", action="store_true", help="also run the recipe sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    args = parser.parse_args()
    results = {}
    for name in args.scenarios:  # each scenario's tables are written as soon as it is done
        results[name] = [(seed, run(SCENARIOS[name][0], seed, [])) for seed in args.seeds]
        write({name: results[name]}, {})
    sweep = {
        label: [(seed, run(SCENARIOS[name][0], seed, extra, env)) for seed in args.seeds]
        for label, (name, extra, env) in (SWEEP.items() if args.sweep else [])
        if name in args.scenarios
    }
    if sweep:
        write({}, sweep)
    return {
        f"{name}_{seed}_final": result["curve"][-1][1]
        for name, runs in results.items()
        for seed, result in runs
    }


if __name__ == "__main__":
    main()
