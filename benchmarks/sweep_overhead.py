"""Sweep overhead: what a sweep costs on top of its trials' own compute, per trial and once.

Runs a real sweep (local Ray, Tune's grid search over 16 recipes, MLflow in a temporary store)
over small trials on a small base model, then reads every trial run's start, end and
`trial/seconds` (its own compute) back from MLflow:

- once: start-up (sweep start to the first trial's work: Ray, the first worker's imports) and
  the finish (last trial's end to the sweep's end: the best trial, the sweep's records);
- per trial: the gap between one trial's end and the next one's start (Tune's scheduling, the
  trial process looking up and loading its inputs) plus the recording (a trial run's wall
  time minus its compute: seed runs, SAE artifacts, the heatmap).

Base model and activations are prepared before the clock starts.

    .venv/bin/python benchmarks/sweep_overhead.py [--concurrency 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    # The stress tests and external evals are compute, not overhead: off, so the table is read
    # against small trials.
    "evals": {"transcoder": False, "ood": False, "probing": False, "contrastive": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="husai-bench-"))
    os.environ["HUSAI_CACHE_DIR"] = str(tmp / "cache")
    uri = "sqlite:///" + str(tmp / "mlflow.db")
    ks = [2, 4, 8, 16]
    d_saes = [32, 64, 128, 256]
    sweep = {
        "name": "overhead",
        "experiment": EXPERIMENT,
        "grids": [{"sae.k": ks, "sae.d_sae": d_saes}],  # 16 recipes, each once
        "objective": [{"metric": "recon/ev", "mode": "max"}],
        "max_concurrency": args.concurrency,
        "asha": {"enabled": False},
        "confirm": {"enabled": False},
    }
    path = tmp / "overhead.yaml"
    path.write_text(yaml.safe_dump(sweep))

    from husai import names
    from husai.config.sweep.spec import load_sweep
    from husai.registry.tracking import Tracker
    from husai.run import stages
    from husai.run.sweep.driver import run_sweep

    cfg = load_sweep(path).base_experiment()
    tracker = Tracker(uri)
    stages.activations(cfg, stages.base_model(cfg, tracker, progress=False), tracker)  # not timed

    start = time.time()
    out = run_sweep(path, tracking_uri=uri, allow_memorised=True)
    end = time.time()

    exp = tracker.client.get_experiment_by_name(names.EXPERIMENT_SWEEP_PREFIX + "overhead")
    runs = tracker.client.search_runs(
        [exp.experiment_id], f"tags.`{names.TAG_KIND}` = '{names.KIND_TRIAL}'"
    )
    runs = sorted(runs, key=lambda r: r.info.start_time)
    t0 = [r.info.start_time / 1000 for r in runs]
    t1 = [r.info.end_time / 1000 for r in runs]
    compute = [r.data.metrics[names.TRIAL_SECONDS] for r in runs]
    recording = [b - a - c for a, b, c in zip(t0, t1, compute, strict=True)]
    gaps = [t0[i + 1] - t1[i] for i in range(len(runs) - 1)]
    per_trial = statistics.median(gaps) + statistics.median(recording)
    print(
        f"\n{out.n_trials} trials ({len(runs)} recorded), concurrency {args.concurrency}, "
        f"{os.cpu_count()} CPUs; median trial compute {statistics.median(compute):.2f} s"
    )
    print("| part | seconds |")
    print("|---|---|")
    rows = [
        ("sweep wall", end - start),
        ("sum of trial compute", sum(compute)),
        ("once: start-up (sweep start to first trial's work)", t0[0] - start),
        ("once: finish (last trial's end to sweep end)", end - t1[-1]),
        ("per trial: gap between trials (median)", statistics.median(gaps)),
        ("per trial: recording (median)", statistics.median(recording)),
        ("per trial: fixed cost (gap + recording)", per_trial),
    ]
    for name, value in rows:
        print(f"| {name} | {value:.2f} |")


if __name__ == "__main__":
    main()
