"""Where tensors live: one device setting (`runtime.device`), resolved once per process.

    auto      inside a Ray trial: the GPU Ray assigned to it (Ray sets CUDA_VISIBLE_DEVICES, so
              it is cuda:0), or the CPU when Ray assigned none; elsewhere CUDA if there is one,
              else the CPU
    cpu       the CPU
    cuda      cuda:0 (refused, exit 2, where there is no CUDA)
    cuda:N    GPU N

One process, one device: the entry point (`husai.run.stages` for the CLI,
`husai.run.sweep.trial.trainable` in a Ray trial) calls `activate` once; the trial moves its
activations there (`active()`), and compute code creates its tensors where its inputs already
are, so no compute function takes or reads a device setting. Runs record `active_info()`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from threadpoolctl import threadpool_limits

from husai.core import repro
from husai.core.errors import InputError

DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
# cuBLAS reuses workspaces across streams unless told a fixed layout; deterministic matmuls on
# CUDA need it set before the first cuBLAS call (CUDA docs, "Results reproducibility").
CUBLAS_DETERMINISTIC = ":4096:8"


class DeviceError(InputError):
    """A device that cannot be used here; one line, exit 2, before any run is created."""


@dataclass(frozen=True)
class DeviceInfo:
    """What a run records about where it ran."""

    device: str  # "cpu", "cuda:0"
    name: str  # the GPU's name, or the CPU's architecture


def resolve(spec: str, ray_gpu_ids: Sequence[object] | None = None) -> torch.device:
    """The torch device `spec` means here. `ray_gpu_ids`: inside a Ray trial, the GPU ids Ray
    assigned to it (`ray.get_gpu_ids()`); None outside Ray."""
    if not re.match(DEVICE_PATTERN, spec):
        raise DeviceError(f"runtime.device: {spec!r} is not auto, cpu, cuda or cuda:N")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        if ray_gpu_ids is not None:
            # A trial uses the GPU Ray gave it, never one it was not given.
            return torch.device("cuda:0" if ray_gpu_ids and _cuda_count() else "cpu")
        return torch.device("cuda:0" if _cuda_count() else "cpu")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    count = _cuda_count()
    if count == 0:
        raise DeviceError(f"runtime.device: {spec} asked for, but this machine has no CUDA GPU")
    if index >= count:
        raise DeviceError(f"runtime.device: {spec} asked for, but this machine has {count} GPU(s)")
    return torch.device(f"cuda:{index}")


_ACTIVE: torch.device | None = None


def activate(
    spec: str, deterministic: bool = True, ray_gpu_ids: Sequence[object] | None = None
) -> torch.device:
    """Resolve `spec` and make it this process's device (see `resolve`, `prepare`)."""
    global _ACTIVE
    device = resolve(spec, ray_gpu_ids)
    prepare(device, deterministic)
    repro.configure(deterministic)
    _ACTIVE = device
    return device


def active() -> torch.device:
    """The device `activate` chose; the CPU in a process that never called it (library use)."""
    return _ACTIVE if _ACTIVE is not None else torch.device("cpu")


def active_info() -> DeviceInfo:
    return describe(active())


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def describe(device: torch.device) -> DeviceInfo:
    if device.type == "cuda":
        return DeviceInfo(str(device), torch.cuda.get_device_name(device))
    return DeviceInfo("cpu", f"cpu ({os.uname().machine})")


def prepare(device: torch.device, deterministic: bool) -> None:
    """Process-wide settings for `device`, before any CUDA work: the cuBLAS workspace layout
    that deterministic matmuls need, and TF32 off so float32 means float32."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.cuda.set_device(device)


def share(device: torch.device, gpu_fraction: float, cpu_threads: float) -> None:
    """A trial's share of a machine: its CPU threads, and on a GPU it shares (`gpu_fraction` <
    1) a cap on its memory, so that one trial running out is its own error (torch's
    OutOfMemoryError), never another trial's."""
    threads = max(1, int(cpu_threads))
    torch.set_num_threads(threads)
    # numpy/scipy's BLAS would start one thread per core in each of the trials sharing the
    # machine (stability scoring is float64 numpy): held to the trial's CPUs too.
    threadpool_limits(threads)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # Ray may reuse the process for trials
        if 0 < gpu_fraction < 1:
            torch.cuda.set_per_process_memory_fraction(gpu_fraction, device)


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def peak_memory_mib(device: torch.device) -> float:
    """The most this process has held allocated on a CUDA device, in MiB."""
    return torch.cuda.max_memory_allocated(device) / 2**20
