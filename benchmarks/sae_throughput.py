"""SAE training throughput of a 5-seed trial: seed-batched path vs sae-lens, measured in one run.

TopK, d_in 128, k 32, batch 4096, fp32, d_sae 1024 and 4096, 5 seeds on the same data:
- sae-lens's `SAETrainer`, seed after seed (the reference implementation);
- HUSAI's reference loop (`train_sae`: sae-lens's training step, seed after seed);
- HUSAI's seed-batched path (`train_seeds_batched`: all 5 seeds in one pass).
Prints rows x seeds per second, the ratio to SAETrainer, the share of this machine's fp32 matmul
peak (measured in the same run, before and after the workers; the higher is kept) counting the
dense-equivalent 6 x batch x d_in x d_sae FLOPs per seed per step, and each run's peak RSS.
Every measurement runs in a fresh worker process, so one run's peak memory hides no other's.

    .venv/bin/python benchmarks/sae_throughput.py [--steps 20] [--d-sae 1024 4096]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

import torch

D_IN, BATCH, K, SEEDS = 128, 4096, 32, (0, 1, 2, 3, 4)
MODES = ("sae_lens", "loop", "batched")


def matmul_peak_gflops(d_sae: int, reps: int = 20) -> float:
    """Best fp32 GFLOP/s over the matmul shapes of one SAE step."""
    shapes = [(BATCH, D_IN, d_sae), (BATCH, d_sae, D_IN), (D_IN, BATCH, d_sae)]
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9)
    return best


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(mode: str, d_sae: int, steps: int) -> dict[str, float]:
    """One measurement in this (fresh) process: seconds for `steps` steps of all 5 seeds."""
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig

    from husai.config.experiment import SAEConfig, SAETrainConfig
    from husai.core.repro import deterministic
    from husai.sae.batched import train_seeds_batched
    from husai.sae.build import build_sae
    from husai.sae.train import train_sae

    torch.manual_seed(0)
    data = torch.randn(8 * BATCH, D_IN)
    sae_cfg = SAEConfig(architecture="topk", d_sae=d_sae, k=K)
    cfg = SAETrainConfig(
        steps=steps, batch_size=BATCH, lr=3e-4, lr_warmup_steps=0, lr_decay_steps=0,
        log_every=steps,
    )  # fmt: skip
    base_rss = _rss_mib()

    def batches(seed: int) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        while True:
            perm = torch.randperm(len(data), generator=g)
            for i in range(0, len(data) - BATCH + 1, BATCH):
                yield data[perm[i : i + BATCH]]

    def run(n_steps: int) -> None:
        c = cfg.model_copy(update={"steps": n_steps, "log_every": n_steps})
        if mode == "batched":
            train_seeds_batched(sae_cfg, c, data, SEEDS)
        elif mode == "loop":
            for s in SEEDS:
                train_sae(sae_cfg, c, data, s)
        else:
            for s in SEEDS:
                sae = build_sae(sae_cfg, D_IN, s)
                tc = SAETrainerConfig(
                    total_training_samples=n_steps * BATCH, train_batch_size_samples=BATCH,
                    lr=3e-4, lr_end=3e-4,
                )  # fmt: skip
                with deterministic():  # the same kernel setting as our paths
                    SAETrainer(cfg=tc, sae=sae, data_provider=batches(s)).fit()

    run(2)  # warm-up
    t = time.perf_counter()
    run(steps)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "rss_mib": _rss_mib(), "base_rss_mib": base_rss}


def measure(mode: str, d_sae: int, steps: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", mode, "--d-sae", str(d_sae)]
    out = subprocess.run(
        [*cmd, "--steps", str(steps)], capture_output=True, text=True, check=True
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--d-sae", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.d_sae[0], args.steps)))
        return
    rows = []
    for d_sae in args.d_sae:
        # The peak is measured before and after the workers and the higher kept: a machine
        # that was busy during one measurement must not make every share look better.
        before = matmul_peak_gflops(d_sae)
        res = {m: measure(m, d_sae, args.steps) for m in MODES}
        rows.append((d_sae, max(before, matmul_peak_gflops(d_sae)), res))
    n_rows = args.steps * BATCH * len(SEEDS)
    print(
        f"\nTopK k={K}, d_in {D_IN}, batch {BATCH}, {len(SEEDS)} seeds, fp32, "
        f"{torch.get_num_threads()} threads, {args.steps} timed steps per seed; "
        "rows x seeds / s (% of matmul peak, dense-equivalent 6*B*d_in*d_sae per seed-step)"
    )
    print(
        "| d_sae | matmul peak GFLOP/s | SAETrainer seed after seed | HUSAI loop seed after seed "
        "| HUSAI seed-batched | batched / SAETrainer | peak RSS MiB (SAETrainer / loop / batched) |"
    )
    print("|---|---|---|---|---|---|---|")
    for d_sae, peak, res in rows:

        def cell(m: str, peak: float = peak, res: dict = res, d_sae: int = d_sae) -> str:
            rate = n_rows / res[m]["seconds"]
            return f"{rate:,.0f} ({100 * rate * 6 * D_IN * d_sae / 1e9 / peak:.0f}%)"

        ratio = res["sae_lens"]["seconds"] / res["batched"]["seconds"]
        rss = " / ".join(f"{res[m]['rss_mib']:,.0f}" for m in MODES)
        print(
            f"| {d_sae} | {peak:.0f} | {cell('sae_lens')} | {cell('loop')} | {cell('batched')} "
            f"| {ratio:.2f}x | {rss} |"
        )
    base = rows[0][2]["batched"]["base_rss_mib"]
    print(f"(each worker's RSS before training, after imports and data: {base:,.0f} MiB)")


if __name__ == "__main__":
    main()
