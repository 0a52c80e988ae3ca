"""Sharing a GPU between sweep trials: N trials at `gpu: 0.25` (four at a time on one GPU) vs
`gpu: 1` (one at a time), measured in one run on the same base model and activations.

Both sweeps are the same 8 recipes (Optuna over train.lr, log-uniform, so no recipe repeats),
TopK on the quick preset's activations, evals off and the isotropic and covariance nulls only,
so that a trial is SAE training plus stability scoring. Each trial process records its peak
allocated GPU memory on its run (`system/peak_gpu_mem_mib`). Prints trials per hour of the
search stage (the base model and activations are made once, before either is timed) and the
peak GPU memory per trial.

    python benchmarks/gpu_sweep.py [--trials 8] [--steps 1500] [--d-sae 1024] [--seeds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml


def sweep_file(folder: Path, gpu: float, args: argparse.Namespace) -> Path:
    concurrency = max(1, round(1 / gpu))
    n_trials = args.baseline_trials if gpu >= 1 and args.baseline_trials else args.trials
    data = {
        "name": f"gpu_share_{gpu:g}".replace(".", "_"),
        "experiment": {
            "preset": "quick",
            "sae": {"architecture": "topk", "d_sae": args.d_sae, "k": 32},
            "train": {
                "steps": args.steps, "batch_size": 1024, "lr_warmup_steps": args.steps // 30,
                "lr_decay_steps": args.steps // 8, "log_every": 50,
            },
            "trial": {"seeds": list(range(args.seeds)), "nulls": ["isotropic", "covariance"]},
            "evals": {"transcoder": False, "ood": False, "probing": False, "contrastive": False},
            "runtime": {"device": "auto"},
        },
        "search_space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-3}},
        "objective": [{"metric": "recon/ev", "mode": "max"}],
        "num_samples": n_trials,
        "max_concurrency": concurrency,
        "seed": 0,
        "resources": {"cpu": args.cpu_per_trial, "gpu": gpu},
        "asha": {"enabled": False},
        "confirm": {"enabled": False},
    }  # fmt: skip
    path = folder / f"sweep_{gpu:g}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--baseline-trials", type=int, default=0, help="trials of the gpu 1 sweep (0: --trials)"
    )
    ap.add_argument("--cpu-per-trial", type=float, default=2.0)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.25, 1.0])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="husai-gpu-sweep-") as tmp:
        os.environ["HUSAI_CACHE_DIR"] = str(Path(tmp) / "cache")
        uri = f"sqlite:///{tmp}/mlflow.db"
        import torch

        from husai import names
        from husai.config.sweep.spec import load_sweep
        from husai.registry.tracking import Tracker
        from husai.run import stages
        from husai.run.sweep.driver import run_sweep

        tracker = Tracker(uri)
        paths = {g: sweep_file(Path(tmp), g, args) for g in args.shares}
        cfg0 = load_sweep(paths[args.shares[0]]).base_experiment()
        stages.check_before_compute(cfg0)
        with contextlib.redirect_stdout(io.StringIO()):
            base = stages.base_model(cfg0, tracker)
            acts = stages.activations(cfg0, base, tracker)
        rows = []
        for gpu, path in paths.items():
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                out = run_sweep(path, tracking_uri=uri, prepared=(base, acts), rerun=True)
            wall = time.perf_counter() - start
            runs = [
                r
                for r in tracker.child_runs(out.sweep_run_id)
                if r.tags.get(names.TAG_KIND) == names.KIND_TRIAL
            ]
            peaks = [r.metrics.get(names.SYSTEM_PEAK_GPU_MIB) for r in runs]
            peaks = [p for p in peaks if p is not None]
            rows.append((gpu, len(runs), wall, peaks))
            print(f"gpu {gpu:g}: {len(runs)} trials in {wall:.1f} s", flush=True)
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(
        f"\n{name}: {args.trials} trials (TopK d_sae {args.d_sae}, k 32, {args.seeds} seeds, "
        f"{args.steps} steps, batch 1024, {args.cpu_per_trial:g} CPUs per trial)"
    )
    print("| resources.gpu | at once | trials | search wall s | trials / hour | vs gpu 1 "
          "| peak GPU MiB per trial (median, max) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    one = {g: n / w for g, n, w, _ in rows}.get(1.0)
    for gpu, n, wall, peaks in rows:
        rate = n / wall
        vs = f"{rate / one:.2f}x" if one else "n/a"
        mem = f"{statistics.median(peaks):,.0f}, {max(peaks):,.0f}" if peaks else "not recorded"
        at_once = max(1, round(1 / gpu))
        print(f"| {gpu:g} | {at_once} | {n} | {wall:.1f} | {3600 * rate:,.0f} | {vs} | {mem} |")


if __name__ == "__main__":
    main()
