"""Sparse or dense decode in the seed-batched step: where does each win on this machine?

Times `husai.sae.batched.sparse.sparse_step` (5 seeds, TopK, d_in 128, batch 2048 by default)
with the sparse decode (one embedding_bag over the chosen latents, sparse encoder gradient) and
the dense one (activations scattered into [S, B, d_sae], decoded and differentiated by bmm),
over a grid of k and d_sae, and prints ms per step and the ratio. The rule the seed-batched
path uses (`husai.sae.batched.sparse.use_dense_decode`, on k plus AuxK's width, so that a step
with dead latents counts their decode too) was read off this table; the last column says what
it picks.

    .venv/bin/python benchmarks/decode_crossover.py [--batch 2048] [--d-in 128] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from husai.sae.batched.sparse import sparse_step, use_dense_decode

D_SAES = (64, 128, 256, 512, 1024, 4096)
KS = (8, 16, 32, 64, 128)


def per_step(
    d_in: int, d_sae: int, k: int, batch: int, steps: int, dense: bool, seeds: int = 5
) -> float:
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(seeds, d_sae, d_in, generator=g) / d_in**0.5
    params = [
        w_dec.transpose(1, 2).clone(),
        torch.zeros(seeds, d_sae),
        w_dec,
        torch.zeros(seeds, d_in),
    ]
    x = torch.randn(seeds, batch, d_in, generator=g)
    dead = torch.zeros(seeds, d_sae, dtype=torch.bool)
    dead[:, : d_sae // 8] = True  # some dead latents: the AuxK part runs too

    def run() -> None:
        sparse_step(params, x, x, dead, "topk", k, 1.0, False, dense_decode=dense)

    run()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    print(f"{torch.get_num_threads()} threads, batch {args.batch}, d_in {args.d_in}, 5 seeds")
    print("| d_sae | k | k/d_sae | sparse ms/step | dense ms/step | sparse/dense | rule picks |")
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for d_sae in D_SAES:
            for k in KS:
                if k > d_sae // 2:
                    continue
                sp = per_step(args.d_in, d_sae, k, args.batch, args.steps, dense=False)
                de = per_step(args.d_in, d_sae, k, args.batch, args.steps, dense=True)
                k_aux = min(d_sae // 8, args.d_in // 2)  # the dead latents per_step sets up
                pick = "dense" if use_dense_decode(k + k_aux, d_sae) else "sparse"
                print(
                    f"| {d_sae} | {k} | {k / d_sae:.3f} | {sp:.1f} | {de:.1f} | {sp / de:.2f} "
                    f"| {pick} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
