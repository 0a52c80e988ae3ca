"""Test double of SAEBench's custom-SAE entry point (sae-bench 0.6.0's `run_evals`): same
signature, same refusals, same output files and format; the scores come from
HUSAI_DOUBLE_SCORE instead of running a language model (tests/harness_double/README.md)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch

MODEL_CONFIGS = {"pythia-70m-deduped": {}, "gemma-2-2b": {}}
EVAL_TYPE_IDS = {
    "core": "core",
    "sparse_probing": "sparse_probing",
    "absorption": "absorption_first_letter",
}


def _standardize(sae: Any) -> None:
    # The real harness reads these from the SAE's config before any eval (general_utils).
    meta = sae.cfg.metadata
    if getattr(meta, "hook_name", None) is None:
        raise ValueError("Cound not determine Hook name from SAE cfg")
    if getattr(meta, "model_name", None) is None:
        raise ValueError("Cound not determine Model name from SAE cfg")
    assert meta.model_name in MODEL_CONFIGS, meta.model_name  # the model it will load


def run_evals(
    model_name: str,
    selected_saes: list[tuple[str, Any]],
    llm_batch_size: int,
    llm_dtype: str,
    device: str,
    eval_types: list[str],
    api_key: str | None = None,
    force_rerun: bool = False,
    save_activations: bool = False,
) -> None:
    if model_name not in MODEL_CONFIGS:
        raise ValueError(f"Unsupported model: {model_name}")
    score = float(os.environ.get("HUSAI_DOUBLE_SCORE", "0.8"))
    for name, sae in selected_saes:
        _standardize(sae)
        x = torch.randn(64, sae.cfg.d_in, generator=torch.Generator().manual_seed(0))
        l0 = float((sae.encode(x) != 0).float().sum(-1).mean())  # the SAE itself is called
        for eval_type in eval_types:
            print(f"Running {eval_type} evaluation")
            metrics = {
                "core": {
                    "sparsity": {"l0": l0},
                    "reconstruction_quality": {"explained_variance": score},
                },
                "sparse_probing": {
                    "llm": {"llm_test_accuracy": 0.95, "llm_top_1_test_accuracy": 0.7},
                    "sae": {"sae_top_1_test_accuracy": score, "sae_top_5_test_accuracy": None},
                },
                "absorption": {"mean": {"mean_absorption_fraction_score": 1 - score}},
            }[eval_type]
            out = {
                "eval_type_id": EVAL_TYPE_IDS[eval_type],
                "eval_config": {
                    "model_name": model_name,
                    "llm_batch_size": llm_batch_size,
                    "llm_dtype": llm_dtype,
                },
                "eval_id": "double",
                "datetime_epoch_millis": int(time.time() * 1000),
                "eval_result_metrics": metrics,
                "eval_result_details": [],
                "sae_bench_commit_hash": "double",
                "sae_lens_id": "custom_sae",
                "sae_lens_release_id": name,
                "sae_lens_version": "double",
                "sae_cfg_dict": sae.cfg.to_dict(),
            }
            folder = f"eval_results/{eval_type}"
            os.makedirs(folder, exist_ok=True)
            with open(f"{folder}/{name}_custom_sae_eval_results.json", "w") as f:
                json.dump(out, f, indent=2)
