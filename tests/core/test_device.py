"""The device setting: how `runtime.device` resolves (also inside a Ray trial), that a missing
GPU is refused before anything is created, that every training path keeps its tensors,
parameters and optimizer state on the chosen device, and (marked `gpu`, run by
benchmarks/gpu_check.sh) what holds on a real GPU: determinism, agreement with the CPU, the
memory cap of a shared GPU, and bfloat16."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_pre_hook

from husai import names
from husai.cli import EXIT_BAD_INPUT, main
from husai.config.experiment import SAEConfig, SAETrainConfig
from husai.config.loading import from_dict
from husai.config.sweep.spec import load_sweep
from husai.core import device as devices
from husai.core.errors import ConfigError
from husai.measure.metrics import recon_metrics
from husai.model.base_model import train_base
from husai.registry.tracking import Tracker
from husai.sae.consistency import ConsistencyPenalty
from husai.sae.train import train_seeds
from tests.helpers import TINY, sparse_data, store_path, user_acts, write_cfg, write_sweep

NO_CUDA = not torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def test_cpu_and_auto_resolve_on_this_machine() -> None:
    assert devices.resolve("cpu") == torch.device("cpu")
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert devices.resolve("auto") == torch.device(expected)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "CUDA", ""])
def test_a_malformed_device_is_refused_naming_the_field(spec: str) -> None:
    with pytest.raises(devices.DeviceError, match="runtime.device"):
        devices.resolve(spec)
    with pytest.raises(ConfigError, match="runtime.device"):
        from_dict({**TINY, "runtime": {"device": spec}}, "c.yaml")


def test_ray_assignment_decides_a_trials_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our own mapping, with the CUDA count faked (no GPU here): a trial uses the GPU Ray gave
    it (Ray makes it the only visible one, cuda:0), and never a GPU it was not given."""
    monkeypatch.setattr(devices, "_cuda_count", lambda: 2)
    assert devices.resolve("auto", ray_gpu_ids=[]) == torch.device("cpu")
    assert devices.resolve("auto", ray_gpu_ids=["1"]) == torch.device("cuda:0")
    assert devices.resolve("auto") == torch.device("cuda:0")
    assert devices.resolve("cuda:1") == torch.device("cuda:1")
    with pytest.raises(devices.DeviceError, match="has 2 GPU"):
        devices.resolve("cuda:2")
    monkeypatch.setattr(devices, "_cuda_count", lambda: 0)
    assert devices.resolve("auto", ray_gpu_ids=["0"]) == torch.device("cpu")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.fresh_store
@pytest.mark.parametrize("own_rows", [False, True])
def test_cuda_without_a_gpu_exits_2_before_any_run(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str], own_rows: bool
) -> None:
    """Whatever the rows' source: extracted, or a user's own file."""
    cfg = write_cfg(tmp_path, {"runtime": {"device": "cuda"}})
    extra = ["--activations-file", str(user_acts(tmp_path))] if own_rows else []
    assert main(["trial", "--config", str(cfg), *extra]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "runtime.device: cuda asked for, but this machine has no CUDA GPU" in err
    assert len(err.strip().splitlines()) == 1
    assert not store_path(isolated_store).exists()


def test_the_device_is_not_part_of_the_recipe() -> None:
    base = from_dict(TINY, "t")
    elsewhere = from_dict({**TINY, "runtime": {"device": "cuda", "deterministic": False}}, "t")
    assert elsewhere.config_hash() == base.config_hash()
    train = {**TINY.get("train", {})}
    f32 = from_dict({**TINY, "train": {**train, "dtype": "float32"}}, "t")
    bf16 = from_dict({**TINY, "train": {**train, "dtype": "bfloat16"}}, "t")
    assert f32.config_hash() == base.config_hash()  # the default: keys made before it stay
    assert bf16.config_hash() != base.config_hash()  # another precision is another recipe


def test_every_run_records_its_device(tracker: Tracker) -> None:
    devices.activate("cpu")
    tags = tracker.standard_tags("h", names.KIND_TRIAL, "trial")
    assert tags[names.TAG_DEVICE] == "cpu"
    assert tags[names.TAG_DEVICE_NAME].startswith("cpu")


def test_a_sweep_asking_for_cuda_without_a_gpu_share_is_refused(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, resources={"cpu": 1, "gpu": 0})
    data = yaml.safe_load(path.read_text())
    data["experiment"]["runtime"] = {"device": "cuda"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"resources.gpu: 0, but experiment.runtime.device"):
        load_sweep(path)


@pytest.fixture
def step_devices() -> Iterator[list[set[str]]]:
    """The devices of every optimizer's parameters, gradients and state at each step, read by
    torch's global optimizer hook, so no training code is changed to be observed."""
    seen: list[set[str]] = []

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        found = set()
        for group in opt.param_groups:
            for p in group["params"]:
                found.add(str(p.device))
                if p.grad is not None:
                    found.add(str(p.grad.device))
                for v in opt.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor) and v.dim() > 0:
                        found.add(str(v.device))
        seen.append(found)

    handle = register_optimizer_step_pre_hook(hook)
    yield seen
    handle.remove()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["batched", "sae_lens_step", "consistency"])
def test_training_keeps_every_tensor_on_the_device(
    device: str, path: str, step_devices: list[set[str]]
) -> None:
    dev = devices.activate(device)
    x = sparse_data(512)
    arch = "jumprelu" if path == "sae_lens_step" else "topk"
    cfg = SAEConfig(architecture=arch, d_sae=48, k=4)
    train = SAETrainConfig(steps=12, batch_size=64, lr_warmup_steps=0, lr_decay_steps=0)
    pulls = None
    if path == "consistency":
        ref = torch.nn.functional.normalize(torch.randn(48, x.shape[1]), dim=1)
        pulls = [(ConsistencyPenalty(ref, 5), 0.1), (ConsistencyPenalty(ref, 5), 0.1)]
    trained = list(train_seeds(cfg, train, x, [0, 1], consistency=pulls))
    want = "cuda:0" if dev.type == "cuda" else "cpu"
    assert len(step_devices) >= 12
    assert all(found == {want} for found in step_devices), step_devices[-1]
    # What leaves training is on the CPU, so saving and every metric are device-independent.
    for t in trained:
        assert t.decoder.device.type == "cpu" and t.decoder_step0.device.type == "cpu"
        assert {p.device.type for p in t.sae.parameters()} == {"cpu"}


@pytest.mark.parametrize("device", DEVICES)
def test_the_base_model_trains_on_the_device(device: str, step_devices: list[set[str]]) -> None:
    dev = devices.activate(device)
    cfg = from_dict({**TINY, "base": {**TINY["base"], "max_steps": 5}}, "t")
    result = train_base(cfg, progress=False)
    want = "cuda:0" if dev.type == "cuda" else "cpu"
    assert step_devices and all(found == {want} for found in step_devices)
    assert {p.device.type for p in result.model.parameters()} == {"cpu"}


# --- on a GPU (benchmarks/gpu_check.sh) ---------------------------------------------------------
def _train(device: str, arch: str, batched: bool, dtype: str = "float32") -> list[Any]:
    devices.activate(device)
    x = sparse_data(2048, d_in=32, n_feat=64)
    cfg = SAEConfig(architecture=arch, d_sae=64, k=4)
    train = SAETrainConfig(
        steps=300, batch_size=128, lr_warmup_steps=10, lr_decay_steps=50, seed_batched=batched,
        dtype=dtype,
    )  # fmt: skip
    return [(t, recon_metrics(t.sae, x).ev) for t in train_seeds(cfg, train, x, [0, 1])]


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("arch", "batched"), [("topk", True), ("batchtopk", True), ("topk", False)]
)
def test_gpu_training_is_bit_reproducible_and_agrees_with_the_cpu(arch: str, batched: bool) -> None:
    """Deterministic mode on CUDA: two runs give identical weights. GPU vs CPU agree only to a
    tolerance (different kernels sum in different orders): held-out EV within 0.02."""
    a, b = _train("cuda", arch, batched), _train("cuda", arch, batched)
    for (ta, _), (tb, _) in zip(a, b, strict=True):
        assert torch.equal(ta.decoder, tb.decoder)
    cpu = _train("cpu", arch, batched)
    for (_, ev_gpu), (_, ev_cpu) in zip(a, cpu, strict=True):
        assert abs(ev_gpu - ev_cpu) < 0.02, (ev_gpu, ev_cpu)


@pytest.mark.gpu
@pytest.mark.parametrize("batched", [True, False])
def test_bfloat16_agrees_with_float32_on_the_gpu(batched: bool) -> None:
    f32, bf16 = _train("cuda", "topk", batched), _train("cuda", "topk", batched, "bfloat16")
    for (_, ev32), (_, ev16) in zip(f32, bf16, strict=True):
        assert abs(ev32 - ev16) < 0.02, (ev32, ev16)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_the_seed_batched_step_never_waits_for_the_gpu(arch: str) -> None:
    """torch's sync debug mode warns at every host synchronisation (a value read back, a
    pageable copy). Two runs that differ only by 20 unlogged steps (AuxK on dead latents
    included) must warn equally often: the steps themselves never synchronise. On failure the
    message lists where the extra synchronisations come from."""
    import warnings

    devices.activate("cuda")
    x = sparse_data(2048, d_in=32, n_feat=64)
    cfg = SAEConfig(architecture=arch, d_sae=64, k=4)

    def syncs(steps: int) -> list[str]:
        train = SAETrainConfig(
            steps=steps, batch_size=128, lr_warmup_steps=0, lr_decay_steps=0, dead_window=5,
            log_every=1000,
        )  # fmt: skip
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                trained = list(train_seeds(cfg, train, x, [0, 1]))  # a generator: run it
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert len(trained) == 2
        return [f"{w.filename}:{w.lineno}" for w in seen if "synchroniz" in str(w.message)]

    short, long = syncs(20), syncs(40)
    # Copying the weights back to the CPU synchronises: an empty list means the mode was off.
    assert short, "no synchronisation seen at all: is the sync debug mode working?"
    extra = sorted(set(long) - set(short)) or sorted(set(long))
    assert len(long) == len(short), (len(short), len(long), extra)


@pytest.mark.gpu
def test_a_trial_over_its_gpu_share_gets_an_out_of_memory_error() -> None:
    dev = devices.activate("cuda")
    total = torch.cuda.get_device_properties(dev).total_memory
    devices.share(dev, 0.01, 1)
    try:
        with pytest.raises(torch.OutOfMemoryError) as err:
            torch.empty(int(total * 0.05) // 4, device=dev)
        assert devices.is_out_of_memory(err.value)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)


def test_the_consistency_term_trains_under_bfloat16() -> None:
    """Its matching reads the cos matrix into numpy, which has no bfloat16."""
    x = sparse_data(256)
    cfg = SAEConfig(architecture="jumprelu", d_sae=32, k=4)
    train = SAETrainConfig(
        steps=6, batch_size=32, lr_warmup_steps=0, lr_decay_steps=0, dtype="bfloat16",
        seed_batched=False,
    )  # fmt: skip
    ref = torch.nn.functional.normalize(torch.randn(32, x.shape[1]), dim=1)
    (t,) = train_seeds(cfg, train, x, [0], consistency=[(ConsistencyPenalty(ref, 2), 0.1)])
    assert torch.isfinite(t.decoder).all()
