"""SAE training throughput of a 5-seed trial: seed-batched path vs sae-lens, measured in one run.

TopK, k 32, batch 4096, 5 seeds on the same data, at each (d_in, d_sae, precision) asked for:
- sae-lens's `SAETrainer`, seed after seed (the reference implementation);
- HUSAI's reference loop (`train_sae`: sae-lens's training step, seed after seed; CPU only);
- HUSAI's seed-batched path (`train_seeds_batched`: all 5 seeds in one pass).
Prints rows x seeds per second, the ratio batched / SAETrainer, the share of the device's matmul
peak for that precision (measured in the same run, before and after the measurements; the
higher is kept) counting the dense-equivalent 6 x batch x d_in x d_sae FLOPs per seed per step,
and each run's peak memory (RSS on the CPU; allocated GPU memory on CUDA).
On the CPU every measurement runs in a fresh worker process, so one run's peak memory hides no
other's; on CUDA they share one process (peak memory is reset between them) to spare a CUDA
start-up per measurement.

    .venv/bin/python benchmarks/sae_throughput.py [--steps 20] [--d-sae 1024 4096]
    python benchmarks/sae_throughput.py --device cuda --d-in 128 512 --d-sae 4096 16384 \
        --dtype float32 bfloat16
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

BATCH, K, SEEDS = 4096, 32, (0, 1, 2, 3, 4)
MODES = ("sae_lens", "loop", "batched")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(d_in: int, d_sae: int, device: torch.device, dtype: str) -> float:
    """Best GFLOP/s over the matmul shapes of one SAE step, at this precision on this device."""
    shapes = [(BATCH, d_in, d_sae), (BATCH, d_sae, d_in), (d_in, BATCH, d_sae)]
    reps = 50 if device.type == "cuda" else 20
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=TORCH_DTYPES[dtype])
        b = torch.randn(k, n, device=device, dtype=TORCH_DTYPES[dtype])
        for _ in range(3):
            a @ b
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9)
    return best


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(
    mode: str, d_in: int, d_sae: int, steps: int, device: str, dtype: str, det: bool = True
) -> dict:
    """One measurement: seconds for `steps` steps of all 5 seeds, and peak memory in MiB."""
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig

    from husai.config.experiment import SAEConfig, SAETrainConfig
    from husai.core import device as devices
    from husai.core.repro import deterministic
    from husai.sae.batched.train import train_seeds_batched
    from husai.sae.build import build_sae
    from husai.sae.train import train_sae

    dev = devices.activate(device, deterministic=det)
    torch.manual_seed(0)
    data = torch.randn(8 * BATCH, d_in).to(dev)
    sae_cfg = SAEConfig(architecture="topk", d_sae=d_sae, k=K)
    cfg = SAETrainConfig(
        steps=steps, batch_size=BATCH, lr=3e-4, lr_warmup_steps=0, lr_decay_steps=0,
        log_every=steps, dtype=dtype,
    )  # fmt: skip
    base_rss = _rss_mib()

    def batches(seed: int) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        while True:
            perm = torch.randperm(len(data), generator=g).to(dev)
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
                sae = build_sae(sae_cfg, d_in, s, device=dev)
                tc = SAETrainerConfig(
                    total_training_samples=n_steps * BATCH, train_batch_size_samples=BATCH,
                    lr=3e-4, lr_end=3e-4, device=str(dev), autocast=dtype == "bfloat16",
                )  # fmt: skip
                with deterministic():  # the same kernel setting as our paths
                    SAETrainer(cfg=tc, sae=sae, data_provider=batches(s)).fit()
        _sync(dev)

    run(2)  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t = time.perf_counter()
    run(steps)
    seconds = time.perf_counter() - t
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
        del data
        torch.cuda.empty_cache()
        return {"seconds": seconds, "peak_mib": peak, "base_mib": 0.0}
    return {"seconds": seconds, "peak_mib": _rss_mib(), "base_mib": base_rss}


def measure(
    mode: str, d_in: int, d_sae: int, steps: int, device: str, dtype: str, det: bool
) -> dict:
    if device != "cpu":
        return worker(mode, d_in, d_sae, steps, device, dtype, det)
    cmd = [sys.executable, __file__, "--worker", mode, "--d-in", str(d_in), "--d-sae", str(d_sae)]
    out = subprocess.run(
        [*cmd, "--steps", str(steps), "--dtype", dtype],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--d-in", type=int, nargs="+", default=[128])
    parser.add_argument("--d-sae", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=list(TORCH_DTYPES))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--no-deterministic", action="store_true", help="torch's default kernels (GPU only)"
    )
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        res = worker(args.worker, args.d_in[0], args.d_sae[0], args.steps, "cpu", args.dtype[0])
        print(json.dumps(res))
        return
    dev = torch.device(args.device)
    if dev.type == "cuda":
        from husai.core import device as devices

        # Deterministic cuBLAS (or not) before the first matmul.
        devices.activate(args.device, deterministic=not args.no_deterministic)
    # The loop is sae-lens's own step driven by HUSAI: on a GPU it adds nothing to SAETrainer.
    modes = MODES if dev.type == "cpu" else ("sae_lens", "batched")
    rows = []
    for d_in in args.d_in:
        for d_sae in args.d_sae:
            for dtype in args.dtype:
                # The peak is measured before and after and the higher kept: a machine that was
                # busy during one measurement must not make every share look better.
                before = matmul_peak_gflops(d_in, d_sae, dev, dtype)
                det = not args.no_deterministic
                res = {
                    m: measure(m, d_in, d_sae, args.steps, args.device, dtype, det) for m in modes
                }
                peak = max(before, matmul_peak_gflops(d_in, d_sae, dev, dtype))
                rows.append((d_in, d_sae, dtype, peak, res))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    n_rows = args.steps * BATCH * len(SEEDS)
    print(
        f"\n{name}: TopK k={K}, batch {BATCH}, {len(SEEDS)} seeds, {torch.get_num_threads()} "
        f"CPU threads, deterministic kernels {'off' if args.no_deterministic else 'on'}, "
        f"{args.steps} timed steps per seed; rows x seeds / s (% of the matmul "
        "peak at that precision, dense-equivalent 6*B*d_in*d_sae per seed-step)"
    )
    head = " | ".join(m for m in modes)
    print(
        f"| d_in | d_sae | precision | matmul peak GFLOP/s | {head} | batched / SAETrainer "
        f"| peak memory MiB ({' / '.join(modes)}) |"
    )
    print("|---" * (6 + len(modes)) + "|")
    for d_in, d_sae, dtype, peak, res in rows:

        def cell(m: str, peak: float = peak, res: dict = res, flop: int = d_in * d_sae) -> str:
            rate = n_rows / res[m]["seconds"]
            return f"{rate:,.0f} ({100 * rate * 6 * flop / 1e9 / peak:.1f}%)"

        ratio = res["sae_lens"]["seconds"] / res["batched"]["seconds"]
        mem = " / ".join(f"{res[m]['peak_mib']:,.0f}" for m in modes)
        cells = " | ".join(cell(m) for m in modes)
        print(
            f"| {d_in} | {d_sae} | {dtype} | {peak:,.0f} | {cells} | {ratio:.2f}x | {mem} |",
            flush=True,
        )
    if dev.type == "cpu":
        base = rows[0][4]["batched"]["base_mib"]
        print(f"(each worker's RSS before training, after imports and data: {base:,.0f} MiB)")


if __name__ == "__main__":
    main()
