"""W&B Inference per-token prices, for the learning loop's cost estimate. The one place they
live: check them against W&B's pricing page before relying on an estimate.

Read on 2026-12-02. W&B's own model page where one was found (``wandb.ai/site/inference/...``),
otherwise the per-model pages of the Bifrost LLM cost calculator
(``getmaxim.ai/bifrost/llm-cost-calculator/provider/wandb/model/...``), which quote W&B's
published prices. A LoRA checkpoint is billed at its base model's rates (W&B docs); RL and SFT
training are free during the preview, so a step's price is its inference tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_READ_ON = "2026-12-02"


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input_per_million: float
    output_per_million: float
    source: str

    def of(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million
        ) / 1e6


_W = "wandb.ai/site/inference/openai-gpt-oss-20b"
_B = "getmaxim.ai/bifrost/llm-cost-calculator/provider/wandb"
PRICES: dict[str, Price] = {
    "openai/gpt-oss-20b": Price(0.05, 0.20, _W),
    "OpenPipe/Qwen3-14B-Instruct": Price(0.05, 0.22, f"{_B}/model/qwen3-14b-instruct"),
    "meta-llama/Llama-3.1-8B-Instruct": Price(0.22, 0.22, f"{_B}/model/llama-3.1-8b-instruct"),
    "meta-llama/Llama-3.1-70B-Instruct": Price(0.80, 0.80, f"{_B}/model/llama-3.1-70b-instruct"),
    "meta-llama/Llama-3.3-70B-Instruct": Price(0.71, 0.71, f"{_B}/model/llama-3.3-70b-instruct"),
}


def price_of(model: str) -> Price | None:
    """The price of a model by its W&B id (None: not in the table, so no estimate)."""
    return PRICES.get(model)
