"""Test double of CE-Bench's ce_bench/CE_Bench.py: `run_eval_once` with its signature, the
results.json it writes (same fields, same place); scores from HUSAI_DOUBLE_SCORE instead of a
language model (tests/harness_double/README.md)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from sae_bench.evals.autointerp.eval_config import AutoInterpEvalConfig  # noqa: F401 (as CE-Bench)


def run_eval_once(dataset: Any, device: str, sae_release: str, sae_id: Any, config: Any) -> None:
    sae = sae_id  # an SAE object where the command line would give a sae-lens id
    hook = sae.cfg.hook_name  # where CE-Bench reads it (an AttributeError without it)
    assert hook, "no hook"
    score = float(os.environ.get("HUSAI_DOUBLE_SCORE", "0.8"))
    rows = [dataset[i] for i in range(len(dataset))]
    assert all({"story1", "story2", "subject"} <= set(r) for r in rows)
    logs = f"interpretability_eval/{sae_release}/custom_sae"
    os.makedirs(logs, exist_ok=True)
    results = {
        "contrastive_dataset": "GulkoA/contrastive-stories-v3",
        "sae_release": sae_release,
        "sae_id": "custom_sae",
        "contrastive_score_mean": 40 * score,
        "independent_score_mean": 80 * score,
        "interpretability_score_mean": 60 * score,
        "total_rows": len(rows),
        "sae_config": sae.cfg.to_dict(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()),
    }
    with open(f"{logs}/results.json", "w") as f:
        json.dump(results, f, indent=4)
