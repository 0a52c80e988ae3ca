"""Does `torch.compile` pay on the CPU step at the ablation grid's small shapes?

Times one seed-batched TopK step (`husai.sae.batched.sparse.sparse_step`: 5 seeds, batch 2048,
d_in 128, an eighth of the latents dead so AuxK runs) three ways: eager as training runs it on
the CPU (data-sized widths), eager with static widths (what a compiled graph needs), and
compiled (static widths, `dynamic=False`), with the first call's compile time, cold (inductor's
on-disk caches start empty, as in a trial's fresh process). Inductor's vectorised CPU code
generation fails on some of these shapes in torch 2.13 (an assertion in its vectorised store),
so the compile runs with `cpp.simdlen` 1 (scalar code) unless `--simdlen 0` asks for the
default. The last column weighs what a 140-step trial saves against the compile it pays.

    .venv/bin/python benchmarks/compile_step.py [--simdlen N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

# Cold compiles, as a trial's fresh process pays them: inductor's on-disk caches start empty.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="husai-inductor-")

import torch  # noqa: E402 - after the cache folder is set

from husai.sae.batched.sparse import sparse_step  # noqa: E402

S, B, D_IN, STEPS = 5, 2048, 128, 140
SHAPES = [(128, 32), (128, 8), (512, 32), (64, 32)]  # (d_sae, k), the grid's


def row(d_sae: int, k: int) -> str:
    params = [torch.randn(S, D_IN, d_sae) * 0.1, torch.zeros(S, d_sae),
              torch.randn(S, d_sae, D_IN) * 0.1, torch.zeros(S, D_IN)]  # fmt: skip
    x = torch.randn(S, B, D_IN)
    dead = torch.zeros(S, d_sae, dtype=torch.bool)
    dead[:, : d_sae // 8] = True

    def call(fn: Callable[..., Any], static: bool) -> None:
        decode = True if static else None  # static widths need a fixed decode
        fn(params, x, x, dead, "topk", k, 1 / 32, True, False, torch.float32, decode, static)

    def per_step(fn: Callable[..., Any], static: bool, n: int = 40) -> float:
        for _ in range(3):
            call(fn, static)
        start = time.perf_counter()
        for _ in range(n):
            call(fn, static)
        return (time.perf_counter() - start) / n

    eager, eager_static = per_step(sparse_step, False), per_step(sparse_step, True)
    head = f"| {d_sae} | {k} | {eager * 1e3:.1f} | {eager_static * 1e3:.1f}"
    torch._dynamo.reset()
    compiled = torch.compile(sparse_step, dynamic=False)
    start = time.perf_counter()
    try:
        call(compiled, True)
    except Exception as e:  # noqa: BLE001 - the finding is that it fails, and how
        return f"{head} | failed: {type(e).__name__} | | |"
    compile_s = time.perf_counter() - start
    fast = per_step(compiled, True)
    net = (eager - fast) * STEPS - compile_s
    return f"{head} | {fast * 1e3:.1f} | {compile_s:.1f} | {net:+.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simdlen", type=int, default=1, help="inductor cpp.simdlen (0: default)")
    args = ap.parse_args()
    if args.simdlen:
        import torch._inductor.config as inductor

        inductor.cpp.simdlen = args.simdlen
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads; {S} seeds, batch {B}, d_in {D_IN}")
    print(
        "| d_sae | k | eager ms/step | eager static | compiled static | compile s "
        "| net s per trial |"
    )
    print("|---|---|---|---|---|---|---|")
    for d_sae, k in SHAPES:
        print(row(d_sae, k), flush=True)


if __name__ == "__main__":
    main()
