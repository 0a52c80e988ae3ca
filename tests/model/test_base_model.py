"""Base model: deterministic training, lossless save/load, clear errors on bad checkpoints."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from husai.config.experiment import ExperimentConfig
from husai.config.loading import from_dict
from husai.model.base_model import (
    CheckpointError,
    evaluate_accuracy,
    load_base,
    save_base,
    train_base,
)
from husai.model.task import make_modular_data


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_same_seed_same_weights(tiny_cfg: ExperimentConfig) -> None:
    a = train_base(tiny_cfg, progress=False)
    b = train_base(tiny_cfg, progress=False)
    wa, wb = weights(a.model), weights(b.model)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.curves.test_loss == b.curves.test_loss


def test_other_seed_other_weights(tiny_cfg: ExperimentConfig) -> None:
    other = from_dict(
        {**tiny_cfg.model_dump(), "base": {**tiny_cfg.base.model_dump(), "init_seed": 1}}
    )
    a = weights(train_base(tiny_cfg, progress=False).model)
    b = weights(train_base(other, progress=False).model)
    assert not torch.equal(a["embed.W_E"], b["embed.W_E"])


def test_training_leaves_global_rng_alone(tiny_cfg: ExperimentConfig) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_base(tiny_cfg, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_curves_and_outcome(tiny_cfg: ExperimentConfig) -> None:
    r = train_base(tiny_cfg, progress=False)
    # eval_every=2 and max_steps=6 (unless it generalised early): steps 2, 4, 6.
    assert r.curves.steps == [2, 4, 6][: len(r.curves.steps)]
    assert len(r.curves.train_loss) == len(r.curves.test_acc) == len(r.curves.steps)
    assert r.outcome in {"generalised", "memorised", "undertrained"}
    assert r.generalised == (r.test_acc >= 0.99)


def test_save_load_roundtrip(tiny_cfg: ExperimentConfig, tmp_path: Path) -> None:
    r = train_base(tiny_cfg, progress=False)
    save_base(r.model, tiny_cfg, tmp_path / "w")
    model, task, base = load_base(tmp_path / "w")
    assert (task, base) == (tiny_cfg.task, tiny_cfg.base)
    tokens = make_modular_data(task.p).tokens
    with torch.no_grad():
        assert torch.equal(model(tokens), r.model(tokens))
    assert evaluate_accuracy(model, task)[1] == pytest.approx(r.test_acc)


def test_corrupt_and_missing_checkpoints_name_the_file(
    tiny_cfg: ExperimentConfig, tmp_path: Path
) -> None:
    r = train_base(tiny_cfg, progress=False)
    d = save_base(r.model, tiny_cfg, tmp_path / "w")
    (d / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_base(d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_base(d)


def test_weights_of_another_shape_are_refused(tiny_cfg: ExperimentConfig, tmp_path: Path) -> None:
    r = train_base(tiny_cfg, progress=False)
    d = save_base(r.model, tiny_cfg, tmp_path / "w")
    wider = from_dict(
        {**tiny_cfg.model_dump(), "base": {**tiny_cfg.base.model_dump(), "d_mlp": 64}}
    )
    save_base(train_base(wider, progress=False).model, tiny_cfg, tmp_path / "x")
    (d / "model.safetensors").write_bytes((tmp_path / "x" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError):
        load_base(d)


_CURVE_SCRIPT = """
import json, sys
from husai.config.loading import from_dict, load_preset
from husai.model.base_model import train_base
q = load_preset("quick").model_dump()
q["base"].update(max_steps=30, eval_every=10)
r = train_base(from_dict(q), progress=False)
print(json.dumps([r.curves.train_loss, r.curves.test_loss, r.curves.test_acc]))
"""


@pytest.mark.slow
def test_same_seed_same_curves_across_processes() -> None:
    """Two processes, the quick preset's real model: bit-identical curves. Without
    deterministic kernels this diverged within 20 steps on torch 2.13 CPU. The second process is
    this one (its imports already paid: a fresh process is mostly imports)."""
    other = subprocess.run(
        [sys.executable, "-c", _CURVE_SCRIPT], capture_output=True, text=True, check=True
    )
    here = io.StringIO()
    with contextlib.redirect_stdout(here):
        exec(_CURVE_SCRIPT, {})  # our own script, the same text the other process ran
    mine = here.getvalue().strip().splitlines()[-1]
    assert json.loads(other.stdout.strip().splitlines()[-1]) == json.loads(mine)
