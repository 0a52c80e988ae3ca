"""Sweep overhead: wall time of a 16-trial sweep vs its trials' own compute / concurrency.

Runs a real sweep (local Ray, OptunaSearch, MLflow in a temporary store) over small trials on
a small base model, then reads each trial's `trial/seconds` back from MLflow. The ratio
wall / (sum of trial seconds / concurrency) is what Ray Tune, Optuna, MLflow recording and
process start-up cost on top of the science. Base model and activations are prepared before
the clock starts.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 16] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

EXPERIMENT = {
    "task": {"p": 23, "train_frac": 0.5},
    "base": {"d_model": 32, "n_heads": 2, "d_mlp": 64, "max_steps": 200, "eval_every": 50},
    "sae": {"architecture": "topk", "d_sae": 64, "k": 4},
    "train": {
        "steps": 200,
        "batch_size": 128,
        "lr_warmup_steps": 10,
        "lr_decay_steps": 20,
        "log_every": 20,
    },
    "trial": {"seeds": [0, 1, 2]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="husai-bench-"))
    os.environ["HUSAI_CACHE_DIR"] = str(tmp / "cache")
    uri = "sqlite:///" + str(tmp / "mlflow.db")
    sweep = {
        "name": "overhead",
        "experiment": EXPERIMENT,
        "search_space": {"sae.k": {"type": "categorical", "choices": [2, 4, 8]}},
        "objective": [{"metric": "recon/ev", "mode": "max"}],
        "num_samples": args.trials,
        "max_concurrency": args.concurrency,
        "asha": {"enabled": False},
    }
    path = tmp / "overhead.yaml"
    path.write_text(yaml.safe_dump(sweep))

    from husai import names
    from husai.config.sweep import load_sweep
    from husai.registry.tracking import Tracker
    from husai.run import stages
    from husai.run.sweep import run_sweep

    cfg = load_sweep(path).base_experiment()
    tracker = Tracker(uri)
    stages.activations(cfg, stages.base_model(cfg, tracker, progress=False), tracker)  # not timed

    start = time.perf_counter()
    out = run_sweep(path, tracking_uri=uri)
    wall = time.perf_counter() - start

    exp = tracker.client.get_experiment_by_name(names.EXPERIMENT_SWEEP_PREFIX + "overhead")
    trials = tracker.client.search_runs(
        [exp.experiment_id], f"tags.`{names.TAG_KIND}` = '{names.KIND_TRIAL}'"
    )
    compute = sum(r.data.metrics[names.TRIAL_SECONDS] for r in trials)
    ideal = compute / args.concurrency
    print(
        f"\n{out.n_trials} trials ({len(trials)} recorded), concurrency {args.concurrency}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        "| sweep wall s | sum of trial compute s | compute / concurrency s | overhead ratio "
        "| overhead per trial s |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {wall:.1f} | {compute:.1f} | {ideal:.1f} | {wall / ideal:.2f}x "
        f"| {(wall - ideal) / max(1, out.n_trials):.2f} |"
    )


if __name__ == "__main__":
    main()
