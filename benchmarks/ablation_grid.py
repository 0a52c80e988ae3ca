"""The research's ablation grid: HUSAI's grid sweep against a plain PyTorch script doing the work.

Both train the same 35 SAEs on the same rows: TopK at k 8/16/32/64 with d_sae 128 plus d_sae
64/256/512 with k 32 (7 recipes), 5 seeds each, 140 steps at batch 2048, lr 3e-4, and score
cross-seed stability (pairwise MCC of decoder directions, Hungarian matched) against random
dictionaries with a bootstrap interval.

(a) `plain`: the script a researcher without HUSAI would write (the original research's shape):
    dense TopK, Adam, a loop over recipes and seeds, the stability numbers into a JSON file; no
    tracking, no nulls beyond random dictionaries, no records.
(b) `husai sweep --sweep sweeps/ablation_grid.yaml` as shipped into a temporary store: every
    trial, seed run, SAE artifact, null (surrogate, random base, covariance, isotropic) and
    interval recorded in MLflow, then `husai report` (the sweep's report with its plots).
(c) the same sweep with only the nulls the default gate policy gates on (the surrogate) and the
    two untrained ones: what a gated answer costs.
(d) (c) with `bundle: true`: the four k at d_sae 128 train as one stack in one Ray Tune trial
    (a grid bundle) instead of one trial and stack per point. Its breakdown is left out: a
    bundle's trial runs open after the shared stack has trained.

The quick preset's base model and activations are made first (not timed): both read the same
SAE-train rows. Every HUSAI side starts with cold null caches and a store of its own. Each side
runs in its own process, back to back, nothing else running; wall time and peak RSS (the
process and its children, Ray's workers included, sampled every 0.1 s) are printed as a table
with the ratio and each side's share of the machine's float32 matmul peak (measured here first:
a 2048^3 matmul, best of 20), counting 6 x batch x d_in x d_sae FLOPs per SAE step for every
SAE a side trains (its nulls' included), followed by where HUSAI's time went (from MLflow).

    .venv/bin/python benchmarks/ablation_grid.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "sweeps" / "ablation_grid.yaml"
RECIPES = [(8, 128), (16, 128), (32, 128), (64, 128), (32, 64), (32, 256), (32, 512)]
SEEDS = [0, 1, 2, 3, 4]
STEPS, BATCH, LR = 140, 2048, 3e-4


# --- (a) the plain script ----------------------------------------------------------------------
def plain(rows_file: Path, out_file: Path) -> None:
    """Train every recipe's seeds with dense TopK, then pairwise MCC vs random dictionaries."""
    import numpy as np
    import torch
    from scipy.optimize import linear_sum_assignment

    x = torch.load(rows_file)
    n, d_in = x.shape

    def train(k: int, d_sae: int, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        w_dec = torch.randn(d_sae, d_in)
        w_dec = (w_dec / w_dec.norm(dim=1, keepdim=True)).requires_grad_()
        w_enc = w_dec.detach().T.clone().requires_grad_()
        b_enc = torch.zeros(d_sae, requires_grad=True)
        b_dec = x.mean(0).clone().requires_grad_()
        opt = torch.optim.Adam([w_enc, b_enc, w_dec, b_dec], lr=LR)
        g = torch.Generator().manual_seed(seed)
        for _ in range(STEPS):
            batch = x[torch.randint(0, n, (BATCH,), generator=g)]
            pre = torch.relu((batch - b_dec) @ w_enc + b_enc)
            top = pre.topk(k, dim=1)
            z = torch.zeros_like(pre).scatter(1, top.indices, top.values)
            loss = ((z @ w_dec + b_dec - batch) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return w_dec.detach()

    def mcc(a: torch.Tensor, b: torch.Tensor) -> float:
        cos = (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T
        c = cos.abs().numpy()
        r, col = linear_sum_assignment(-c)
        return float(c[r, col].mean())

    def pairwise(decoders: list[torch.Tensor]) -> list[float]:
        m = len(decoders)
        return [mcc(decoders[i], decoders[j]) for i in range(m) for j in range(i + 1, m)]

    rng = np.random.default_rng(0)
    results = []
    for k, d_sae in RECIPES:
        trained = pairwise([train(k, d_sae, s) for s in SEEDS])
        g = torch.Generator().manual_seed(1_000_000)
        random = pairwise([torch.randn(d_sae, d_in, generator=g) for _ in SEEDS])
        diffs = np.array(trained) - np.array(random)
        boot = [rng.choice(diffs, len(diffs)).mean() for _ in range(1000)]
        results.append(
            {
                "k": k,
                "d_sae": d_sae,
                "pw_mcc": float(np.mean(trained)),
                "pw_mcc_random": float(np.mean(random)),
                "excess_ci": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
            }
        )
        print(json.dumps(results[-1]), flush=True)
    out_file.write_text(json.dumps(results, indent=2))


# --- measuring ---------------------------------------------------------------------------------
def measured(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MiB of the process tree, output) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = 0.0
    me = psutil.Process(proc.pid)
    while proc.poll() is None:
        rss = 0
        with contextlib.suppress(psutil.Error):
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a child that just ended
                    rss += p.memory_info().rss
        peak = max(peak, rss / 2**20)
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout is not None else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out[-3000:]}")
    return time.perf_counter() - start, peak, out


def breakdown(uri: str, sweep_name: str) -> list[tuple[str, float]]:
    """Where the HUSAI sweep's time went, from the runs it recorded."""
    from husai import names
    from husai.registry.tracking import Tracker

    tracker = Tracker(uri)
    exp = tracker.client.get_experiment_by_name(names.EXPERIMENT_SWEEP_PREFIX + sweep_name)
    runs = tracker.client.search_runs([exp.experiment_id])
    (sweep,) = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_SWEEP]
    trials = sorted(
        (r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_TRIAL),
        key=lambda r: r.info.start_time,
    )
    compute = sum(r.data.metrics[names.TRIAL_SECONDS] for r in trials)
    walls = sum((r.info.end_time - r.info.start_time) / 1000 for r in trials)
    first, last = trials[0].info.start_time / 1000, trials[-1].info.end_time / 1000
    return [
        ("sweep run (start to end)", (sweep.info.end_time - sweep.info.start_time) / 1000),
        ("  start-up: Ray, first worker's imports", first - sweep.info.start_time / 1000),
        ("  trials' own compute (trial/seconds)", compute),
        ("  trials' recording (run wall - compute)", walls - compute),
        ("  between trials (scheduling, inputs)", (last - first) - walls),
        ("  finish (best trial, sweep records)", sweep.info.end_time / 1000 - last),
    ]


def matmul_peak() -> float:
    """This machine's float32 matmul rate (GFLOP/s) with torch's default threads: 2048^3,
    best of 20."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def tflop(d_in: int, trained_per_recipe: int) -> float:
    """Dense-equivalent TFLOPs of training `trained_per_recipe` SAEs of every recipe."""
    per_sae = sum(6 * BATCH * d_in * d_sae * STEPS for _, d_sae in RECIPES)
    return per_sae * trained_per_recipe / 1e12


def husai_side(tmp: Path, name: str, sweep: Path, prepared: Path, env: dict[str, str]) -> dict:
    """One HUSAI side in a copy of the prepared store, its null and reference caches cold."""
    import shutil

    db = tmp / f"{name}.db"
    shutil.copyfile(prepared, db)
    for cold in ("nulls", "references", "ray_results"):
        shutil.rmtree(tmp / "cache" / cold, ignore_errors=True)
    uri = "sqlite:///" + str(db)
    husai_cli = [sys.executable, "-m", "husai"]
    wall, rss, out = measured(
        [*husai_cli, "sweep", "--sweep", str(sweep), "--tracking-uri", uri], env
    )
    run_id = next(
        line.split("sweep run ")[1].split()[0].rstrip(".,;:")
        for line in out.splitlines()
        if "sweep run " in line
    )
    report_wall, _, _ = measured(
        [*husai_cli, "report", "--sweep-run", run_id, "--tracking-uri", uri], env
    )
    return {"uri": uri, "sweep": wall, "rss": rss, "report": report_wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plain", nargs=2, metavar=("ROWS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        plain(Path(args.plain[0]), Path(args.plain[1]))
        return

    tmp = Path(tempfile.mkdtemp(prefix="husai-ablation-"))
    env = {**os.environ, "HUSAI_CACHE_DIR": str(tmp / "cache")}
    os.environ.update(env)
    prepared = tmp / "prepared.db"
    import torch
    import yaml

    from husai.config.sweep.spec import load_sweep
    from husai.registry.tracking import Tracker
    from husai.run import stages

    cfg = load_sweep(SWEEP).base_experiment()
    tracker = Tracker("sqlite:///" + str(prepared))
    base = stages.base_model(cfg, tracker, progress=False)
    acts = stages.activations(cfg, base, tracker)
    stages.random_base_activations(cfg, tracker)
    rows = tmp / "rows.pt"
    torch.save(acts.acts.train.clone(), rows)
    d_in = acts.acts.d_in
    print(f"data: {tuple(acts.acts.train.shape)} SAE-train rows of the quick preset ({tmp})")
    gated = tmp / "ablation_grid_gated.yaml"
    spec = yaml.safe_load(SWEEP.read_text())
    spec["name"] = "ablation_grid_gated"
    spec["experiment"]["trial"]["nulls"] = ["isotropic", "covariance", "surrogate"]
    gated.write_text(yaml.safe_dump(spec))
    bundled = tmp / "ablation_grid_bundled.yaml"
    spec = {**spec, "name": "ablation_grid_bundled", "bundle": True}
    bundled.write_text(yaml.safe_dump(spec))
    peak = matmul_peak()

    plain_wall, plain_rss, _ = measured(
        [sys.executable, __file__, "--plain", str(rows), str(tmp / "p.json")], env
    )
    shipped = husai_side(tmp, "shipped", SWEEP, prepared, env)
    only_gated = husai_side(tmp, "gated", gated, prepared, env)
    in_bundles = husai_side(tmp, "bundled", bundled, prepared, env)

    b, c, d = shipped, only_gated, in_bundles
    sides = [
        ("(a) plain PyTorch script, no nulls", plain_wall, 0.0, plain_rss, 1),
        ("(b) husai sweep, every null (+ report)", b["sweep"], b["report"], b["rss"], 3),
        ("(c) husai sweep, gated nulls (+ report)", c["sweep"], c["report"], c["rss"], 2),
        ("(d) (c) in grid bundles (+ report)", d["sweep"], d["report"], d["rss"], 2),
    ]
    print(f"\n{os.cpu_count()} CPUs, float32 matmul peak {peak:.0f} GFLOP/s (2048^3, best of 20)")
    print(f"7 recipes x 5 seeds, {STEPS} steps at batch {BATCH}, d_in {d_in}")
    print(
        "| side | SAEs trained | wall s (sweep + report) | peak RSS MiB | speed-up vs (a) "
        "| share of matmul peak |"
    )
    print("|---|---|---|---|---|---|")
    for label, wall, report, rss, per_recipe in sides:
        total = wall + report
        share = tflop(d_in, 5 * per_recipe) * 1e3 / wall / peak  # GFLOP / s / (GFLOP/s)
        walls = f"{wall:.1f}" + (f" + {report:.1f}" if report else "")
        print(
            f"| {label} | {35 * per_recipe} | {walls} | {rss:.0f} "
            f"| {plain_wall / total:.2f}x | {share:.1%} |"
        )
    sweeps = (("(b)", b, "ablation_grid"), ("(c)", c, "ablation_grid_gated"))
    for name, side, sweep_name in sweeps:
        print(f"\nwhere the husai sweep's time went, {name} (from its MLflow runs):")
        print("| part | s |")
        print("|---|---|")
        for part, value in breakdown(side["uri"], sweep_name):
            print(f"| {part} | {value:.1f} |")


if __name__ == "__main__":
    main()
