"""The README's base-model table: the demo's question asked of three base models, so that its
answer does not rest on one. For each `base.init_seed` (0, 1, 2 by default) the quick preset's
base model is trained (or reused), its activations extracted, and four of the quick sweep's
recipes (TopK at lambda 0 with the sweep's training settings, d_sae from about 3x to 45x the
activations' effective rank) run as 5-seed trials with the isotropic, covariance and surrogate
nulls (evals off), every one recorded in an MLflow store.
Each row says whether the default policy's stability check passes: the excess of independent
pw_mcc over the surrogate null (the calibrated one), its 95% lower bound >= 0.

    python scripts/base_seeds.py [--store /tmp/base_seeds] [--init-seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from husai import names
from husai.config.loading import deep_merge, from_dict
from husai.config.sweep.spec import load_sweep
from husai.model.rows import as_tensor
from husai.model.synthetic import participation_ratio
from husai.registry.gate import Reading, evaluate, load_policy
from husai.run.trial_stages import trial, trial_inputs

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "sweeps" / "quick.yaml"
RECIPES = ((8, 32), (16, 64), (16, 256), (32, 512))  # (k, d_sae)
OVERRIDES = {
    "trial": {"seeds": [0, 1, 2, 3, 4], "nulls": ["isotropic", "covariance", "surrogate"]},
    "evals": {"transcoder": False, "ood": False, "probing": False, "contrastive": False},
}
PW = names.STABILITY_PW_MCC


def passes(metrics: dict[str, float]) -> bool:
    """The default policy's stability check on these numbers."""
    policy = load_policy(ROOT / "gates" / "default.yaml")
    readings = {k: Reading(v, "run") for k, v in metrics.items()}
    d = evaluate(policy, "table", readings, None, n_seeds=5, lam=0.0)
    return all(c.passed for c in d.checks if c.check.startswith("stability."))


def row(uri: str, sweep: dict[str, Any], init: int, k: int, d_sae: int) -> str:
    """One recipe on the base model of `init`: trained (or found) and recorded, as a table row."""
    data = deep_merge(
        sweep,
        {
            **OVERRIDES,
            "name": "base_seeds",
            "base": {"init_seed": init},
            "sae": {"k": k, "d_sae": d_sae},
            "consistency": {"lambda": 0.0},
        },
    )
    cfg = from_dict(data, f"base seed {init}, k {k}, d_sae {d_sae}")
    inputs = trial_inputs(cfg, uri)
    m = inputs.tracker.get_run(trial(cfg, inputs).run_id).metrics
    x = as_tensor(inputs.acts.train).double().numpy()
    pr = participation_ratio(np.linalg.eigvalsh(np.cov(x.T)))
    base = inputs.tracker.find_base_version(cfg.base_hash())
    acc = "?" if base is None else f"{base.test_acc:.3f}"
    ex = [m.get(names.stability_key(PW, names.excess_suffix("surrogate", b))) for b in names.BOUNDS]
    return (
        f"| {init} | {acc} | {pr:.1f} | {k} | {d_sae} | {m[PW]:.4f} | "
        f"{m[names.stability_key(PW, names.null_suffix('surrogate'))]:.4f} | "
        f"{ex[0]:+.4f} [{ex[1]:+.4f}, {ex[2]:+.4f}] | "
        f"{m[names.stability_key(PW, names.null_suffix('covariance'))]:.4f} | "
        f"{'pass' if passes(m) else 'blocks'} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("/tmp/base_seeds"))
    ap.add_argument("--init-seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    args.store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{args.store / 'mlflow.db'}"
    sweep = load_sweep(SWEEP).base_experiment().model_dump(by_alias=True)
    lines = [
        "| base init seed | test acc | PR | k | d_sae | pw_mcc | surrogate | excess over "
        "surrogate [95% CI] | covariance null | stability check |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for init in args.init_seeds:
        for k, d_sae in RECIPES:
            start = time.perf_counter()
            lines.append(row(uri, sweep, init, k, d_sae))
            print(f"base {init} k {k} d_sae {d_sae}: {time.perf_counter() - start:.0f} s")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
