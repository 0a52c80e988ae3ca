"""The README's lambda table: what the consistency term does at each lambda (loss units) on the
quick preset (TopK k 16, d_sae 512, 5 seeds, 1,500 steps), one trial per lambda recorded in
an MLflow store, printed as a markdown table.

Evals are off and the nulls are the covariance and surrogate ones (the random-base null costs
about 100 s per trial and does not change what the table is about): the table is about
stability, copying and reconstruction. One run each; training is deterministic on CPU.

    python scripts/lambda_table.py [--store /tmp/lambda_table] [--lambdas 0 0.001 0.01 0.1 1 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from husai import names
from husai.config.loading import deep_merge, from_dict, preset_dict
from husai.run.trial_stages import trial, trial_inputs

OVERRIDES = {
    "trial": {"seeds": [0, 1, 2, 3, 4], "nulls": ["covariance", "surrogate"]},
    "evals": {"transcoder": False, "ood": False, "probing": False, "contrastive": False},
}
SEED_VS_SEED_LCB = names.stability_key(
    names.STABILITY_PW_MCC, names.excess_suffix(names.NULL_SURROGATE, "_lcb")
)
COLUMNS = (
    ("`stability/pw_mcc`", names.STABILITY_PW_MCC, ".4f"),
    ("excess lcb (seed vs seed)", SEED_VS_SEED_LCB, "+.4f"),
    ("independent pw_mcc", names.INDEPENDENT_PW_MCC, ".4f"),
    ("independent excess lcb", names.independent_key(names.NULL_SURROGATE, "_lcb"), "+.4f"),
    ("alignment to reference", names.CONSISTENCY_ALIGNMENT, ".4f"),
    ("independent gain [95% CI]", names.CONSISTENCY_INDEPENDENT_GAIN, "+.4f"),
    ("`recon/ev`", names.RECON_EV, ".4f"),
    ("`ev_drop`", names.CONSISTENCY_EV_DROP, "+.4f"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("/tmp/lambda_table"))
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0, 1e-3, 1e-2, 1e-1, 1, 10])
    args = ap.parse_args()
    args.store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{args.store / 'mlflow.db'}"
    rows: list[tuple[float, str]] = []
    ref_controls, scale = None, None
    for lam in args.lambdas:
        data = deep_merge(preset_dict("quick"), {**OVERRIDES, "consistency": {"lambda": lam}})
        cfg = from_dict({**data, "name": "lambda_table"}, f"lambda {lam:g}")
        inputs = trial_inputs(cfg, uri)
        start = time.perf_counter()
        done = trial(cfg, inputs)
        run = inputs.tracker.get_run(done.run_id)
        m = run.metrics
        ref_controls = m.get(names.CONSISTENCY_REF_CONTROLS, ref_controls)
        scale = run.params.get(names.PARAM_CONSISTENCY_SCALE, scale)
        cells = []
        for _, key, spec in COLUMNS:
            v = m.get(key)
            cell = "-" if v is None else format(v, spec)
            if key == names.CONSISTENCY_INDEPENDENT_GAIN and v is not None:
                lo = m.get(names.CONSISTENCY_INDEPENDENT_GAIN_LCB)
                hi = m.get(names.CONSISTENCY_INDEPENDENT_GAIN_UCB)
                cell += f" [{lo:+.4f}, {hi:+.4f}]" if lo is not None and hi is not None else ""
            cells.append(cell)
        rows.append((lam, f"| {lam:g} | " + " | ".join(cells) + " |"))
        seconds = time.perf_counter() - start
        print(f"lambda {lam:g}: run {done.run_id} ({seconds:.0f} s)", flush=True)
    print()
    print("| lambda | " + " | ".join(c for c, _, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    print("\n".join(row for _, row in sorted(rows)))
    print(f"\nreference vs the lambda = 0 seeds: pw_mcc {ref_controls}; consistency.scale {scale}")


if __name__ == "__main__":
    main()
