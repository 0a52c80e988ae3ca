"""How the seed-batched step's cost per SAE moves with the number of SAEs in one stack.

A grid bundle (`bundle: true` in a sweep file) trains the ablation grid's four k at d_sae 128
as one stack of 40 members (5 seeds and 5 surrogate-null seeds per k) instead of four stacks
of 10. This times, on the grid's shape (d_in 128, d_sae 128, batch 2048, 40 steps, random rows),
one stack of 40 mixed-k members against four stacks of 10 (one k each), and the same at one k,
in one process, back to back, after a warm-up; with the ratio of per-SAE cost.

    .venv/bin/python benchmarks/stack_size.py
"""

from __future__ import annotations

import time

import torch

from husai.config.experiment import SAEConfig, SAETrainConfig
from husai.sae.train import train_members

STEPS, BATCH, D_IN, D_SAE = 40, 2048, 128, 128
KS = (8, 16, 32, 64)


def timed(x: torch.Tensor, ks: list[int]) -> float:
    cfg = SAETrainConfig(
        steps=STEPS, batch_size=BATCH, lr=3e-4, lr_warmup_steps=0, lr_decay_steps=0
    )
    sae = SAEConfig(architecture="topk", d_sae=D_SAE, k=ks[0])
    start = time.perf_counter()
    train_members(sae, cfg, [x] * len(ks), list(range(len(ks))), ks=ks)
    return time.perf_counter() - start


def main() -> None:
    x = torch.randn(2670, D_IN, generator=torch.Generator().manual_seed(0))
    timed(x, [32] * 10)  # warm-up
    mixed = [k for k in KS for _ in range(10)]
    rows = [
        ("40 members, k 8/16/32/64 (a bundle)", timed(x, mixed)),
        ("4 stacks of 10, one k each", sum(timed(x, [k] * 10) for k in KS)),
        ("40 members, k 32", timed(x, [32] * 40)),
        ("4 stacks of 10, k 32", sum(timed(x, [32] * 10) for _ in KS)),
    ]
    print(
        f"{torch.get_num_threads()} threads, d_in {D_IN}, d_sae {D_SAE}, batch {BATCH}, "
        f"{STEPS} steps, 40 SAEs per row"
    )
    print("| how | s | vs 4 stacks of 10 |")
    print("|---|---|---|")
    for i, (label, secs) in enumerate(rows):
        ref = rows[1][1] if i < 2 else rows[3][1]
        print(f"| {label} | {secs:.2f} | {ref / secs:.2f}x |")


if __name__ == "__main__":
    main()
