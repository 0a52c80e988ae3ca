"""Test double of sae_bench.evals.autointerp.eval_config (CE-Bench imports its config)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AutoInterpEvalConfig:
    model_name: str = ""
    llm_batch_size: int = 32
    llm_dtype: str = "float32"
    random_seed: int = 42
