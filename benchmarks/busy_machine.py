"""A trial's training beside a CPU-bound neighbour: how much OpenMP's spin-waiting costs, and what
fixes it.

torch's CPU build runs its parallel regions on GNU OpenMP, whose threads spin while they wait
for each other. With every core's thread in use and a neighbour process taking one core, a
thread that is descheduled holds up the others, which spin instead of yielding to it.

Each row trains the same seed-batched recipe (5 seeds, TopK d_sae 128 k 32, batch 2048, d_in
128, 100 steps) in a fresh process under one setting, once on a quiet machine and once beside a
neighbour (a pure-Python busy loop on one core), and prints steps/s and the slowdown:

- unset: OpenMP's default (spin for a while, then sleep), torch's default thread count;
- `OMP_WAIT_POLICY=PASSIVE`: waiting threads sleep at once (what `import husai` sets unless
  the environment already says otherwise);
- 1 thread (`torch.set_num_threads(1)`): no OpenMP team to wait on.

    .venv/bin/python benchmarks/busy_machine.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

WORKLOAD = """
import sys, time, torch
if sys.argv[1] == "1":
    torch.set_num_threads(1)
from husai.config.experiment import SAEConfig, SAETrainConfig
from husai.sae.batched.train import train_seeds_batched
g = torch.Generator().manual_seed(0)
x = torch.randn(4096, 128, generator=g) @ torch.randn(128, 128, generator=g)
sae = SAEConfig(architecture="topk", d_sae=128, k=32)
cfg = SAETrainConfig(steps=100, batch_size=2048, lr_warmup_steps=0, lr_decay_steps=0)
train_seeds_batched(sae, cfg.model_copy(update={"steps": 5}), x, [0, 1, 2, 3, 4])  # warm-up
start = time.perf_counter()
train_seeds_batched(sae, cfg, x, [0, 1, 2, 3, 4])
print(100 / (time.perf_counter() - start))
"""
NEIGHBOUR = "while True: pass"
SETTINGS = {
    "unset (OpenMP default)": ({}, "0"),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, "0"),
    "GOMP_SPINCOUNT=10000": ({"GOMP_SPINCOUNT": "10000"}, "0"),
    "GOMP_SPINCOUNT=100000": ({"GOMP_SPINCOUNT": "100000"}, "0"),
    "1 thread": ({}, "1"),
}


def steps_per_s(env: dict[str, str], one_thread: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", WORKLOAD, one_thread],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    print(f"{os.cpu_count()} CPUs; 5 seeds x TopK d_sae 128 k 32, batch 2048, 100 steps")
    print("| setting | quiet steps/s | beside a busy neighbour steps/s | slowdown |")
    print("|---|---|---|---|")
    for name, (extra, one_thread) in SETTINGS.items():
        env = {**base, **extra}
        quiet = steps_per_s(env, one_thread)
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
        try:
            time.sleep(0.5)
            busy = steps_per_s(env, one_thread)
        finally:
            neighbour.kill()
            neighbour.wait()
        print(f"| {name} | {quiet:.1f} | {busy:.1f} | {quiet / busy:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
