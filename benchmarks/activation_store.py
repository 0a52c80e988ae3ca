"""Disk-backed activation sets: a trial's peak memory on a set bigger than memory allows, and
what reading batches from disk costs against rows held in memory.

1. Peak RSS. A synthetic 2,000,000 x 512 float32 set (3.78 GiB of SAE-train rows, low-rank plus
   noise) is written as a language-model cache entry (the layout `husai.model.lm_source`
   writes) and trained by `husai trial --activation-key` in a fresh process: 5 seeds, TopK
   d_sae 2048 k 32, batch 2048. Once with the SAE-train rows on disk (the default for a set this
   size), once loaded into memory (`HUSAI_MAX_ROWS_IN_MEMORY_MIB` raised); the process's peak
   RSS is the kernel's high-water mark (`VmHWM` in /proc/<pid>/status).
2. Step time. At the quick preset's scale (2,785 SAE-train rows x d_in 128: p = 59 with its
   held-out and shifted rows set apart), 5 seeds of TopK d_sae 512 k 16, batch 512: ms per
   training step with the rows as a tensor and as `DiskRows`, alternating, 3 runs each.

    .venv/bin/python benchmarks/activation_store.py [--steps 30] [--skip-in-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

N_ROWS, N_EVAL, D_IN, RANK = 2_000_000, 20_000, 512, 64


def write_set(folder: Path) -> str:
    """A language-model-layout entry of synthetic rows, published with its checksum."""
    from husai.core.cache import publish_dir

    key = "b" * 16

    def fill(dst: Path) -> None:
        g = torch.Generator().manual_seed(0)
        basis = torch.randn(RANK, D_IN, generator=g) / RANK**0.5
        for name, n in (("train", N_ROWS - N_EVAL), ("eval", N_EVAL)):
            out = np.lib.format.open_memmap(
                dst / f"{name}.npy", mode="w+", dtype=np.float32, shape=(n, D_IN)
            )
            for start in range(0, n, 100_000):
                m = min(100_000, n - start)
                codes = torch.randn(m, RANK, generator=g) * (torch.rand(m, RANK, generator=g) < 0.2)
                rows = codes @ basis + 0.05 * torch.randn(m, D_IN, generator=g)
                out[start : start + m] = rows.numpy()
            out.flush()
            del out
            np.save(dst / f"{name}_rows.npy", np.arange(n, dtype=np.int64))
        meta = {"source": "transformer_lens", "format": 1, "key": key, "hook": "synthetic"}
        (dst / "meta.json").write_text(json.dumps(meta))

    publish_dir(folder / "activations" / key, fill)
    return key


def trial_peak(tmp: Path, key: str, steps: int, in_memory: bool) -> tuple[float, float]:
    """(peak RSS in GiB, wall seconds) of `husai trial` on the set, in a fresh process."""
    cfg = {
        "name": f"store-{'mem' if in_memory else 'disk'}",
        "sae": {"architecture": "topk", "d_sae": 2048, "k": 32},
        "train": {
            "steps": steps,
            "batch_size": 2048,
            "lr_warmup_steps": 0,
            "lr_decay_steps": 0,
            "log_every": 10,
        },
        "trial": {"seeds": [0, 1, 2, 3, 4], "register_sae": False},
        "evals": {"transcoder": False, "ood": False, "probing": False, "contrastive": False},
    }
    path = tmp / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HUSAI_CACHE_DIR": str(tmp / "cache")}
    env["HUSAI_MAX_ROWS_IN_MEMORY_MIB"] = "1000000" if in_memory else "2048"
    cmd = [sys.executable, "-m", "husai", "trial", "--config", str(path)]
    cmd += ["--activation-key", key, "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        peak_kib = 0
        # The kernel's high-water mark of the process's resident memory (VmHWM), read until
        # it exits. Not wait4's ru_maxrss: that also counts the pages the child shared with
        # this process between fork and exec.
        while proc.poll() is None:
            peak_kib = max(peak_kib, _hwm_kib(proc.pid))
            time.sleep(0.05)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"husai trial failed:\n{err.read().decode()[-2000:]}")
    return peak_kib / 2**20, wall


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:  # it just exited
        pass
    return 0


def step_times(steps: int, repeats: int) -> tuple[float, float]:
    """(ms per step in memory, ms per step from disk), medians over alternating runs."""
    from husai.config.experiment import SAEConfig, SAETrainConfig
    from husai.model.rows import DiskRows
    from husai.sae.train import train_seeds

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2785, 128, generator=g) @ torch.randn(128, 128, generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "train.npy", x.numpy())
        disk = DiskRows(Path(tmp) / "train.npy")
        sae = SAEConfig(architecture="topk", d_sae=512, k=16)
        cfg = SAETrainConfig(steps=steps, batch_size=512, lr_warmup_steps=0, lr_decay_steps=0)
        seeds = [0, 1, 2, 3, 4]
        list(train_seeds(sae, cfg.model_copy(update={"steps": 5}), x, seeds))  # warm-up
        times: dict[str, list[float]] = {"memory": [], "disk": []}
        for _ in range(repeats):
            for name, rows in (("memory", x), ("disk", disk)):
                start = time.perf_counter()
                list(train_seeds(sae, cfg, rows, seeds))
                times[name].append((time.perf_counter() - start) / steps * 1000)
    return statistics.median(times["memory"]), statistics.median(times["disk"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps of the big trial")
    parser.add_argument("--skip-in-memory", action="store_true", help="skip the 4 GB in-memory run")
    args = parser.parse_args()

    mem_ms, disk_ms = step_times(200, 3)
    with tempfile.TemporaryDirectory(prefix="husai-store-") as t:
        tmp = Path(t)
        start = time.perf_counter()
        key = write_set(tmp / "cache")
        print(f"wrote the 2M x 512 set in {time.perf_counter() - start:.1f} s", flush=True)
        disk_rss, disk_wall = trial_peak(tmp, key, args.steps, in_memory=False)
        mem = None if args.skip_in_memory else trial_peak(tmp, key, args.steps, in_memory=True)

    print("\n| measure | in memory | on disk | disk / memory |")
    print("|---|---|---|---|")
    if mem is not None:
        print(
            f"| 2M x 512 trial: peak RSS (GiB) | {mem[0]:.2f} | {disk_rss:.2f} | "
            f"{disk_rss / mem[0]:.2f} |"
        )
        print(
            f"| 2M x 512 trial: wall (s), {args.steps} steps | {mem[1]:.1f} | {disk_wall:.1f} | "
            f"{disk_wall / mem[1]:.2f} |"
        )
    else:
        print(f"| 2M x 512 trial: peak RSS (GiB) | - | {disk_rss:.2f} | - |")
        print(f"| 2M x 512 trial: wall (s), {args.steps} steps | - | {disk_wall:.1f} | - |")
    print(
        f"| quick scale: ms per step (5 seeds) | {mem_ms:.1f} | {disk_ms:.1f} | "
        f"{disk_ms / mem_ms:.3f} |"
    )


if __name__ == "__main__":
    main()
