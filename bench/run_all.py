"""Run every benchmark and rewrite bench/RESULTS.md (by hand: `make bench`; never part of tests)."""

from __future__ import annotations

import datetime
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import bench_adapter_overhead  # noqa: E402
import bench_engine  # noqa: E402
import bench_hooks  # noqa: E402
import bench_learning  # noqa: E402
import bench_loop  # noqa: E402
import bench_rl_step  # noqa: E402
import bench_soak  # noqa: E402

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
    "openai_sdk_capture_cost_us": ("<= 100", lambda v: v <= 100),
    "openai_sdk_stream_capture_cost_us": ("<= 100", lambda v: v <= 100),
    "rl_step_vs_raw_peft": ("<= 1.2", lambda v: v <= 1.2),
    "hook_cost_fraction": ("<= 0.03", lambda v: v <= 0.03),
    "concurrent_throughput_ratio": (">= 0.8", lambda v: v >= 0.8),
    "concurrent_rollouts_lost": ("0", lambda v: v == 0),
    "remote_overlapped_vs_max_phase": ("<= 1.15", lambda v: v <= 1.15),
    "langchain_rss_growth_mb": ("<= 5", lambda v: v <= 5),
    "llamaindex_rss_growth_mb": ("<= 5", lambda v: v <= 5),
    "llamaindex_agent_rss_growth_mb": ("<= 5", lambda v: v <= 5),
    "langchain_call_growth": ("<= 1.2", lambda v: v <= 1.2),
    "llamaindex_call_growth": ("<= 1.2", lambda v: v <= 1.2),
    "llamaindex_agent_open_rollouts": ("0", lambda v: v == 0),
    "backend_max_loaded_adapters": ("<= 8", lambda v: v <= 8),
    "backend_max_models_in_memory": ("<= 2", lambda v: v <= 2),
    "store_save_growth": ("<= 1.5", lambda v: v <= 1.5),
    "store_groups_growth": ("<= 1.5", lambda v: v <= 1.5),
}


README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
README_ROWS = [  # (what, measured, target), formatted with this run's results
    (
        "ChatWandb invoke overhead over the raw `openai` SDK "
        "(ChatOpenAI: {chatopenai_invoke_overhead_us:+.0f} µs)",
        "{chatwandb_invoke_overhead_us:+.0f} µs",
        "≤ 0.5× ChatOpenAI's",
    ),
    (
        "ChatWandb stream overhead (ChatOpenAI: {chatopenai_stream_overhead_us:+.0f} µs)",
        "{chatwandb_stream_overhead_us:+.0f} µs",
        "≤ 0.5× ChatOpenAI's",
    ),
    (
        "WandbLLM chat overhead (OpenAILike: {openailike_chat_overhead_us:+.0f} µs)",
        "{wandbllm_chat_overhead_us:+.0f} µs",
        "≤ 0.5× OpenAILike's",
    ),
    (
        "trace hook per LLM call, recording on vs off",
        "{hook_cost_us:+.0f} µs, {hook_cost_fraction:.1%} of an agent step (timed within "
        "the step: {agent_step_recording_cost_us:+.0f} µs, {agent_step_recording_fraction:.1%})",
        "≤ 100 µs, ≤ 3%",
    ),
    (
        "any framework's openai-SDK call, captured in a rollout vs outside one, whole / "
        "streamed (what the same call costs when its caller asks for the tokens itself: "
        "{openai_sdk_tokens_cost_us:+.0f} µs / {openai_sdk_stream_tokens_cost_us:+.0f} µs; "
        "capture spares its caller the SDK's objects for them, not their JSON; it builds a "
        "stream's chunks without the SDK's dispatch: against a plain stream built so, "
        "{openai_sdk_stream_capture_vs_built_alike_us:+.0f} µs)",
        "{openai_sdk_capture_cost_us:+.0f} µs / {openai_sdk_stream_capture_cost_us:+.0f} µs",
        "≤ 100 µs",
    ),
    (
        "500 concurrent rollouts, recording on vs off (median of 30 paired bursts, quartiles)",
        "{concurrent_throughput_ratio:.2f}× ({concurrent_ratio_quartile_low:.2f}–"
        "{concurrent_ratio_quartile_high:.2f}), {concurrent_rollouts_lost:.0f} lost",
        "≥ 0.8×, 0 lost",
    ),
    (
        "local engine, single stream vs raw `model.generate`",
        "{single_vs_raw_ratio:.2f}×",
        "≥ 0.95×",
    ),
    (
        "local engine, 8 / 16 concurrent vs single stream",
        "{concurrent8_vs_single:.1f}× / {concurrent16_vs_single:.1f}×",
        "≥ 3.5× / ≥ 5×",
    ),
    ("json_schema constrained decoding vs free", "{constrained_slowdown:.1%} slower", "≤ 15%"),
    (
        "RL step (16 trajectories × ~250 tokens) vs a raw peft loop",
        "{rl_step_vs_raw_peft:.2f}× the time",
        "≤ 1.2×",
    ),
    (
        "learning loop, next step sampled while this one trains, jobs elsewhere "
        "(local backend, 2 cores: {local_overlapped_vs_sequential:.2f}× the sequential step)",
        "{remote_overlapped_vs_max_phase:.2f}× max(sampling, training) a step "
        "({remote_overlapped_vs_sequential:.2f}× the sequential step)",
        "≤ 1.15×",
    ),
    (
        "memory after warm-up, {hook_runs:.0f} runs with the trace hooks (LangChain chain / "
        "LlamaIndex call / agent)",
        "{langchain_rss_growth_mb:+.1f} / {llamaindex_rss_growth_mb:+.1f} / "
        "{llamaindex_agent_rss_growth_mb:+.1f} MB",
        "≤ 5 MB",
    ),
    (
        "local backend, {backend_requests:.0f} requests and {backend_models:.0f} models trained",
        "{backend_rss_growth_mb:+.0f} MB after warm-up; ≤ {backend_max_loaded_adapters:.0f} "
        "adapters and {backend_max_models_in_memory:.0f} trainers in memory",
        "bounded",
    ),
    (
        "rollout store, save / groups() per rollout at 1,000,000 vs 10,000 stored",
        "{store_save_growth:.2f}× / {store_groups_growth:.2f}×",
        "flat (≤ 1.5×)",
    ),
]


def readme_table(results: dict[str, float], date: str) -> str:
    lines = [
        f"Run {date} on {os.cpu_count()} cores by `make bench`: the figures of bench/RESULTS.md "
        "(which says which sections were re-run alone since):",
        "",
        "| what | measured | target |",
        "| --- | --- | --- |",
    ]
    for what, measured, target in README_ROWS:
        try:
            lines.append(f"| {what.format(**results)} | {measured.format(**results)} | {target} |")
        except KeyError as missing:  # a section never run on this machine: said, not a crash
            lines.append(
                f"| {what.split(' (')[0].split(',')[0]} | not run ({missing}) | {target} |"
            )
    return "\n".join(lines)


def results_on_file() -> tuple[dict[str, float], str]:
    """The metrics of bench/RESULTS.md's tables, and the date of their run."""
    text = (HERE / "RESULTS.md").read_text()
    values = {k: float(v) for k, v in re.findall(r"^\| (\w+) \| (-?[\d.]+) \|", text, re.M)}
    date = re.search(r"^Run (\d{4}-\d\d-\d\d) on", text, re.M)
    return values, date.group(1) if date else datetime.date.today().isoformat()


def write_readme(results: dict[str, float], date: str) -> None:
    readme = HERE.parent / "README.md"
    block = f"{README_START}\n{readme_table(results, date)}\n{README_END}"
    readme.write_text(
        bench_learning.replace_block(readme.read_text(), README_START, README_END, block)
    )


def kept_sections(written: dict) -> str:
    """The sections of RESULTS.md this script does not write (the learning runs' tables, the
    Weave figures: other scripts own them), as they were."""
    path = HERE / "RESULTS.md"
    if not path.exists():
        return ""
    parts = re.split(r"^(?=## )", path.read_text(), flags=re.M)
    others = [p for p in parts if p.startswith("## ") and p[3:].split("\n", 1)[0] not in written]
    return "".join("\n" + p.strip("\n") + "\n" for p in others)


SECTIONS = {  # name for --only: (heading, benchmark)
    "adapter": ("Adapter overhead (µs, medians of 400 interleaved rounds)", bench_adapter_overhead),
    "hooks": ("Trace hooks (µs, instant loopback server)", bench_hooks),
    "engine": ("Local engine (SmolLM2-135M fp32, 64 tokens)", bench_engine),
    "rl": ("RL step (4 groups x 4 trajectories x ~250 tokens)", bench_rl_step),
    "loop": ("Learning loop: overlap (seconds a step, `bench/bench_loop.py`)", bench_loop),
    "soak": ("Soak: memory and cost over long runs (`bench/bench_soak.py`)", bench_soak),
}


def section(title: str, results: dict[str, float], note: str = "") -> list[str]:
    lines = [f"## {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| metric | value | target | met |", "| --- | --- | --- | --- |"]
    for key, value in results.items():
        target, check = TARGETS.get(key, ("", None))
        met = "" if check is None else ("yes" if check(value) else "**no**")
        lines.append(f"| {key} | {value:.3f} | {target} | {met} |")
    return [*lines, ""]


def main() -> None:
    sections = {title: bench.run() for title, bench in SECTIONS.values()}
    lines = [
        "# Benchmark results",
        "",
        f"Run {datetime.date.today().isoformat()} on {os.cpu_count()} cores with `make bench`.",
        "",
    ]
    for title, results in sections.items():
        lines += section(title, results)
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n" + kept_sections(sections))
    print("\n".join(lines))
    write_readme(
        {k: v for results in sections.values() for k, v in results.items()},
        datetime.date.today().isoformat(),
    )
    # the learning runs (minutes each) append their own section, and the README's demo table
    bench_learning.main()


def rerun(names: list[str]) -> None:
    """Run only these sections and put them in place in RESULTS.md, each stamped with its own
    run; the other sections stay as they were. The README's table is redone from the file."""
    path = HERE / "RESULTS.md"
    text = path.read_text()
    stamp = (
        f"Re-run {datetime.date.today().isoformat()} on {os.cpu_count()} cores with "
        f"`python bench/run_all.py --only {' '.join(names)}`."
    )
    for name in names:
        title, bench = SECTIONS[name]
        block = "\n".join(section(title, bench.run(), stamp))
        parts = re.split(r"^(?=## )", text, flags=re.M)
        if not any(p.startswith(f"## {title}\n") for p in parts):  # a new section: before
            at = next((i for i, p in enumerate(parts) if p.startswith("## Learning")), len(parts))
            parts.insert(at, f"## {title}\n")  # the learning runs', which close the file
        text = "".join(block + "\n" if p.startswith(f"## {title}\n") else p for p in parts)
        print(block)
    path.write_text(text)
    write_readme(*results_on_file())


if __name__ == "__main__":
    if sys.argv[1:] == ["--readme-only"]:  # the README's table from the results on file
        write_readme(*results_on_file())
    elif sys.argv[1:2] == ["--only"]:  # e.g. --only adapter hooks
        unknown = set(sys.argv[2:]) - set(SECTIONS)
        if unknown or not sys.argv[2:]:
            sys.exit(f"--only takes some of {', '.join(SECTIONS)}")
        rerun(sys.argv[2:])
    else:
        main()
