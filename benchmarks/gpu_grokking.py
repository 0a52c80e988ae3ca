"""Time to grokking of the research's own setting (`--preset paper`: p 113, train share 0.3,
40,000-step budget) on a device, and the base model's steps per second there vs this
machine's CPU, measured in one run.

The device run trains until held-out accuracy reaches the target (or the budget ends) and
prints the step and wall time it got there; the CPU row times `--cpu-steps` steps of the same
model on this machine's CPU (all its cores) and extrapolates the CPU's time to the same step.

    python benchmarks/gpu_grokking.py [--device cuda] [--cpu-steps 300] [--budget-s 240]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cpu-steps", type=int, default=300)
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop the device run after")
    args = ap.parse_args()

    from husai.config.loading import load_preset
    from husai.core import device as devices
    from husai.model.base_model import train_base

    cfg = load_preset("paper")

    class OutOfTime(Exception):
        pass

    start = time.perf_counter()
    reached: list[tuple[int, float]] = []
    seen = {"step": 0, "acc": 0.0}

    def on_eval(step: int, test_acc: float) -> None:
        seen.update(step=step, acc=test_acc)
        if test_acc >= cfg.base.target_test_acc and not reached:
            reached.append((step, time.perf_counter() - start))
        if time.perf_counter() - start > args.budget_s:
            raise OutOfTime

    dev = devices.activate(args.device)
    with contextlib.suppress(OutOfTime):
        train_base(cfg, progress=False, on_eval=on_eval)
    device_s = time.perf_counter() - start
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    if reached:
        print(f"{name}: target reached at step {reached[0][0]} after {reached[0][1]:.1f} s")
    else:
        print(f"{name}: step {seen['step']} after {device_s:.1f} s, held-out acc {seen['acc']}")
    print("timing the CPU ...", flush=True)

    devices.activate("cpu")
    short = cfg.model_copy(
        update={"base": cfg.base.model_copy(update={"max_steps": args.cpu_steps})}
    )
    t = time.perf_counter()
    train_base(short, progress=False)
    cpu_rate = args.cpu_steps / (time.perf_counter() - t)
    print(
        f"\npaper preset base model (p {cfg.task.p}, train share {cfg.task.train_frac}, "
        f"budget {cfg.base.max_steps} steps, eval every {cfg.base.eval_every})"
    )
    print("| where | steps/s | held-out acc >= target at step | wall s to that step |")
    print("|---|---|---|---|")
    if reached:
        step, secs = reached[0]
        rate = step / secs
        print(f"| {name} | {rate:,.0f} | {step} | {secs:.1f} |")
        print(
            f"| CPU ({torch.get_num_threads()} threads, this machine) | {cpu_rate:,.1f} "
            f"| (same step) | {step / cpu_rate:,.0f} (extrapolated) |"
        )
        print(f"time to grokking, {name} vs this CPU: {step / cpu_rate / secs:.1f}x faster")
    else:
        print(
            f"| {name} | {seen['step'] / device_s:,.0f} | not reached in {device_s:.0f} s "
            f"(step {seen['step']}, held-out acc {seen['acc']:.3f}) | - |"
        )
        print(f"| CPU ({torch.get_num_threads()} threads) | {cpu_rate:,.1f} | - | - |")


if __name__ == "__main__":
    main()
