"""A LangChain app with structured output, served from a trained checkpoint (local backend).

python examples/structured_output.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

from langchain_wandb import ChatWandb
from wandb_serverless import TrainableModel
from wandb_serverless.local import LocalBackend

MODEL_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "models"


class City(BaseModel):
    """A city and the country it is in."""

    name: str = Field(description="the city")
    country: str = Field(description="its country")


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as data,
        LocalBackend.start(data_dir=data, model_cache_dir=MODEL_CACHE) as backend,
    ):
        tm = TrainableModel(
            "cities", "examples", backend.model_id, client=backend.client(), history_dir=data
        )
        rows = [
            {
                "messages": [
                    {"role": "user", "content": f"Where is {c}?"},
                    {"role": "assistant", "content": f'{{"name":"{c}","country":"{k}"}}'},
                ]
            }
            for c, k in (
                ("Paris", "France"),
                ("Rome", "Italy"),
                ("Lisbon", "Portugal"),
                ("Oslo", "Norway"),
            )
        ]
        tm.train_sft(rows, {"batch_size": 2, "learning_rate": 5e-4})
        llm = ChatWandb(
            model=tm.ref,
            base_url=backend.base_url,
            api_key=backend.api_key,
            temperature=0,
            max_tokens=60,
        )
        city = llm.with_structured_output(City).invoke("Where is Madrid?")
        print(f"checkpoint {tm.latest_step()} ({tm.ref}) answered: {city!r}")


if __name__ == "__main__":
    main()
