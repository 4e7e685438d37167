"""A LlamaIndex agent whose best traces become an SFT job (local backend by default).

python examples/llamaindex_sft.py

About 4-5 minutes on 2 CPU cores: the model loads, 9 agent runs are recorded (a progress bar
counts them), the best become SFT rows, and the SFT job's progress bar follows the training.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.tools import FunctionTool
from llama_index.llms.wandb import RolloutEventHandler, WandbLLM
from tqdm.auto import tqdm

from wandb_serverless import TrainableModel
from wandb_serverless.local import LocalBackend
from wandb_serverless.rollouts import RolloutStore, rollout

MODEL_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "models"


def lookup_capital(country: str) -> str:
    """Look up the capital city of a country."""
    return {"France": "Paris", "Italy": "Rome", "Spain": "Madrid"}.get(country, "unknown")


COUNTRIES = ("France", "Italy", "Spain")
RUNS_PER_COUNTRY = 3


async def main() -> None:
    started = time.monotonic()
    print("starting the local backend (SmolLM2-135M on CPU)...", flush=True)
    with (
        tempfile.TemporaryDirectory() as data,
        LocalBackend.start(data_dir=data, model_cache_dir=MODEL_CACHE) as backend,
    ):
        tm = TrainableModel(
            "capitals", "examples", backend.model_id, client=backend.client(), history_dir=data
        )
        llm = WandbLLM(
            model=tm.ref,
            api_base=backend.base_url,
            api_key=backend.api_key,
            temperature=1.0,
            max_tokens=48,
        )
        agent = FunctionAgent(
            tools=[FunctionTool.from_defaults(fn=lookup_capital)],
            llm=llm,
            initial_tool_choice="lookup_capital",
        )
        print(f"backend up in {time.monotonic() - started:.0f} s; recording agent runs", flush=True)
        store = RolloutStore(Path(data) / "rollouts.db")
        RolloutEventHandler().install()
        runs = tqdm(total=len(COUNTRIES) * RUNS_PER_COUNTRY, desc="agent runs", unit="run")
        for country in COUNTRIES:
            for _ in range(RUNS_PER_COUNTRY):
                async with rollout(group=country, store=store) as run:
                    answer = str(await agent.run(f"What is the capital of {country}?"))
                    run.reward = 1.0 if lookup_capital(country) in answer else 0.0
                runs.update()
                runs.set_postfix(rewarded=sum(t.reward > 0 for t in store.query()))
        runs.close()
        rows = store.export_sft_rows(top_k_per_group=1, min_reward=1.0)
        print(f"{store.count()} traces recorded; {len(rows)} become SFT rows", flush=True)
        if rows:
            result = tm.train_sft(rows, {"batch_size": 2, "learning_rate": 5e-4})
            print(
                f"SFT job done: checkpoint step {result.step}, loss "
                f"{result.metrics.get('loss', 0):.3f}; served as {tm.ref} "
                f"({time.monotonic() - started:.0f} s in all)"
            )


if __name__ == "__main__":
    asyncio.run(main())
