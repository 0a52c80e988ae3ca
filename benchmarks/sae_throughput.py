"""SAE training throughput: HUSAI's loop vs sae-lens's SAETrainer on identical data, one run.

TopK, d_in 128, batch 4096, fp32, d_sae 1024 and 4096. Prints rows/s for each trainer, their
ratio, and the share of this machine's fp32 matmul peak (measured here, in the same run) that
each reaches, counting 6 x batch x d_in x d_sae FLOPs per step (dense encoder + decoder,
forward and backward).

    .venv/bin/python benchmarks/sae_throughput.py [--steps 20] [--d-sae 1024 4096]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import torch
from sae_lens import SAETrainer
from sae_lens.config import SAETrainerConfig

from husai.config import SAEConfig, SAETrainConfig
from husai.repro import deterministic
from husai.sae import build_sae
from husai.train import train_sae

D_IN, BATCH, K = 128, 4096, 16


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


def ours(data: torch.Tensor, d_sae: int, steps: int) -> float:
    cfg = SAETrainConfig(
        steps=steps,
        batch_size=BATCH,
        lr=3e-4,
        lr_warmup_steps=0,
        lr_decay_steps=0,
        log_every=steps,
    )
    sae_cfg = SAEConfig(architecture="topk", d_sae=d_sae, k=K)
    train_sae(sae_cfg, cfg.model_copy(update={"steps": 2}), data, seed=0)  # warm-up
    t = time.perf_counter()
    train_sae(sae_cfg, cfg, data, seed=0)
    return steps * BATCH / (time.perf_counter() - t)


def sae_lens_trainer(data: torch.Tensor, d_sae: int, steps: int) -> float:
    def batches() -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        while True:
            perm = torch.randperm(len(data), generator=g)
            for i in range(0, len(data) - BATCH + 1, BATCH):
                yield data[perm[i : i + BATCH]]

    def fit(n: int) -> float:
        sae = build_sae(SAEConfig(architecture="topk", d_sae=d_sae, k=K), D_IN, 0)
        cfg = SAETrainerConfig(
            total_training_samples=n * BATCH,
            train_batch_size_samples=BATCH,
            lr=3e-4,
            lr_end=3e-4,
        )
        trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches())
        t = time.perf_counter()
        with deterministic():  # the same kernel setting as our loop
            trainer.fit()
        return time.perf_counter() - t

    fit(2)  # warm-up
    return steps * BATCH / fit(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--d-sae", type=int, nargs="+", default=[1024, 4096])
    args = parser.parse_args()
    torch.manual_seed(0)
    data = torch.randn(8 * BATCH, D_IN)
    rows = []
    for d_sae in args.d_sae:
        peak = matmul_peak_gflops(d_sae)
        flops_per_row = 6 * D_IN * d_sae
        r_ours = ours(data, d_sae, args.steps)
        r_lens = sae_lens_trainer(data, d_sae, args.steps)
        rows.append((d_sae, peak, r_lens, r_ours, flops_per_row))
    print(
        f"\nTopK k={K}, d_in {D_IN}, batch {BATCH}, fp32, {torch.get_num_threads()} threads, "
        f"{args.steps} timed steps each"
    )
    print(
        "| d_sae | matmul peak GFLOP/s | SAETrainer rows/s (% peak) | HUSAI loop rows/s (% peak) "
        "| HUSAI / SAETrainer |"
    )
    print("|---|---|---|---|---|")
    for d_sae, peak, r_lens, r_ours, fpr in rows:
        pl, po = 100 * r_lens * fpr / 1e9 / peak, 100 * r_ours * fpr / 1e9 / peak
        print(
            f"| {d_sae} | {peak:.0f} | {r_lens:,.0f} ({pl:.0f}%) | {r_ours:,.0f} ({po:.0f}%) "
            f"| {r_ours / r_lens:.2f}x |"
        )


if __name__ == "__main__":
    main()
