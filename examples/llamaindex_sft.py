"""A LlamaIndex agent whose best traces become an SFT job (local backend by default).

python examples/llamaindex_sft.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.tools import FunctionTool
from llama_index.llms.wandb import RolloutEventHandler, WandbLLM

from wandb_serverless import TrainableModel
from wandb_serverless.local import LocalBackend
from wandb_serverless.rollouts import RolloutStore, rollout

MODEL_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "models"


def lookup_capital(country: str) -> str:
    """Look up the capital city of a country."""
    return {"France": "Paris", "Italy": "Rome", "Spain": "Madrid"}.get(country, "unknown")


async def main() -> None:
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
        store = RolloutStore(Path(data) / "rollouts.db")
        RolloutEventHandler().install()
        for country in ("France", "Italy", "Spain"):
            for _ in range(3):
                async with rollout(group=country, store=store) as run:
                    answer = str(await agent.run(f"What is the capital of {country}?"))
                    run.reward = 1.0 if lookup_capital(country) in answer else 0.0
        rows = store.export_sft_rows(top_k_per_group=1, min_reward=1.0)
        print(f"{store.count()} traces recorded; {len(rows)} become SFT rows")
        if rows:
            result = tm.train_sft(rows, {"batch_size": 2, "learning_rate": 5e-4})
            print(
                f"SFT job done: checkpoint step {result.step}, loss {result.metrics.get('loss', 0):.3f}; served as {tm.ref}"
            )


if __name__ == "__main__":
    asyncio.run(main())
