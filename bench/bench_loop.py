"""The learning loop's overlap, measured (issue 25): wall time per step of the sequential loop
(``max_steps_off_policy=0``: sample, then train) against the overlapped one (1: the next step
samples while this one trains), side by side in one run,

(a) on the local backend, where sampling and training share this machine's cores, and
(b) against a training API whose jobs take a fixed time elsewhere: the same server with its
    RL jobs replaced by a sleep of about one step's sampling time (no CPU here), so the agents'
    machine only samples. Target: overlapped <= 1.15 x max(sampling, training) per step.

The agent is one ChatWandb call (24 tokens at T=1.0), 4 groups x 8 rollouts a step, rewarded
by the answer's length parity (every group has reward variance: one round a step, the same
work in every run), evaluated greedily on 4 prompts. A step's wall time is the time between
two consecutive trained checkpoints (the steady state; the first step has nothing to overlap).

    python bench/bench_loop.py [--steps 5]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TRAIN = ["rain", "snow", "fog", "wind", "hail", "dew", "frost", "thunder"]
HELD_OUT = ["sleet", "mist", "drizzle", "haze"]


class SleepingJobs:
    """RL jobs that take ``seconds`` elsewhere: the job waits, then its checkpoint is the
    untrained LoRA adapter (outputs as the base model's)."""

    def __init__(self, worker: Any, seconds: float) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from wandb_serverless.local.trainer import LORA

        self.seconds = seconds
        base = AutoModelForCausalLM.from_pretrained(worker.base_path)
        self.adapter = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **LORA))

    def __call__(self, worker: Any, job: Any) -> int:
        worker.state.add_event(job.id, "training_started", {"num_sequences": 1})
        time.sleep(self.seconds)
        metrics = {"loss": 0.0, "num_trainable_tokens": 0.0}
        worker.state.add_event(job.id, "gradient_step", metrics)
        return worker._save(job, self.adapter, metrics)


def one_loop(server: Any, max_off: int, steps: int, tmp: Path) -> dict[str, float]:
    from langchain_wandb import ChatWandb
    from wandb_serverless import TrainableModel
    from wandb_serverless.learning import LearningLoop, Sampling

    tm = TrainableModel(f"overlap-{uuid.uuid4().hex[:6]}", "bench", server.model_id,
                        client=server.client(), history_dir=tmp, progress=False)  # fmt: skip

    async def agent(topic: str, sampling: Sampling) -> float:
        llm = ChatWandb(model=sampling.model, base_url=server.base_url, api_key=server.api_key,
                        temperature=0.0 if sampling.evaluation else 1.0, seed=sampling.seed,
                        max_tokens=24)  # fmt: skip
        answer = await llm.ainvoke(f"In one sentence, what is {topic}?")
        return float(len(answer.text) % 2)

    loop = LearningLoop(
        tm, agent, train_scenarios=TRAIN, eval_scenarios=HELD_OUT, group_size=8,
        groups_per_step=4, max_rounds=1, max_steps_off_policy=max_off,
        train_config={"learning_rate": 1e-5}, state_dir=tmp / tm.name, progress=False,
    )  # fmt: skip
    started = time.monotonic()
    reports = loop.run(steps)
    total = time.monotonic() - started
    trained = [r["time"] for r in loop.history() if r["event"] == "trained"]
    return {
        "step_s": statistics.mean(b - a for a, b in itertools.pairwise(trained)),
        "sampling_s": statistics.mean(r.sampling_s for r in reports),
        "training_s": statistics.mean(r.training_s for r in reports),
        "evaluating_s": statistics.mean(r.evaluating_s for r in reports),
        "total_s": total,
    }


def run(steps: int = 5) -> dict[str, float]:
    from wandb_serverless.local import LocalBackend

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, LocalBackend.start(
        data_dir=Path(tmp) / "data", model_cache_dir=HERE.parent / ".cache" / "models",
        max_batch_size=64,
    ) as server:  # fmt: skip
        for label, max_off in (("local_sequential", 0), ("local_overlapped", 1)):
            for key, value in one_loop(server, max_off, steps, Path(tmp)).items():
                out[f"{label}_{key}"] = value
        worker = server.app.state.backend.worker
        seconds = out["local_sequential_sampling_s"]  # a job as long as a step's sampling
        jobs = SleepingJobs(worker, seconds)
        worker._rl = lambda job: jobs(worker, job)
        for label, max_off in (("remote_sequential", 0), ("remote_overlapped", 1)):
            for key, value in one_loop(server, max_off, steps, Path(tmp)).items():
                out[f"{label}_{key}"] = value
    out["remote_job_s"] = seconds
    out["local_overlapped_vs_sequential"] = (
        out["local_overlapped_step_s"] / out["local_sequential_step_s"]
    )
    out["remote_overlapped_vs_sequential"] = (
        out["remote_overlapped_step_s"] / out["remote_sequential_step_s"]
    )
    bound = max(out["remote_sequential_sampling_s"], seconds)
    out["remote_overlapped_vs_max_phase"] = out["remote_overlapped_step_s"] / bound
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5)
    for key, value in run(parser.parse_args().steps).items():
        print(f"{key:40s} {value:10.3f}")
