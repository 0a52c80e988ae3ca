"""Activations: the cache key, the held-out and shifted splits, one cache entry on disk, a
user's own file, clear errors. (Finding an entry on disk or in MLflow: tests/run/test_stages.py.)"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from husai.config.experiment import ActivationsConfig, ExperimentConfig
from husai.config.loading import from_dict
from husai.core.errors import ConfigError
from husai.model.activations import (
    ActivationCacheError,
    activation_key,
    check_hook,
    extract,
    load_activations,
    load_user_activations,
    save_activations,
)
from husai.model.base_model import build_model
from husai.model.task import make_modular_data
from tests.helpers import user_acts


def with_acts(cfg: ExperimentConfig, **acts: object) -> ExperimentConfig:
    return from_dict({**cfg.model_dump(), "activations": {**cfg.activations.model_dump(), **acts}})


def test_key_depends_on_every_input(tiny_cfg: ExperimentConfig) -> None:
    base = ("run-1", "1", tiny_cfg.base_hash())
    k = activation_key(*base, tiny_cfg.activations)
    assert k == activation_key(*base, tiny_cfg.activations)
    variants = [
        with_acts(tiny_cfg, hook="blocks.0.hook_mlp_out"),
        with_acts(tiny_cfg, position=0),
        with_acts(tiny_cfg, split_seed=1),
        with_acts(tiny_cfg, eval_frac=0.5),
        with_acts(tiny_cfg, ood_frac=0.3),
    ]
    keys = {activation_key(*base, v.activations) for v in variants}
    other_base = {
        activation_key("run-2", "1", tiny_cfg.base_hash(), tiny_cfg.activations),
        activation_key("run-1", "2", tiny_cfg.base_hash(), tiny_cfg.activations),
        activation_key("run-1", "1", "0" * 16, tiny_cfg.activations),
    }
    assert k not in keys | other_base and len(keys) == 5 and len(other_base) == 3


def test_rows_are_split_and_match_the_model(tiny_cfg: ExperimentConfig, tmp_path: Path) -> None:
    model = build_model(tiny_cfg.task, tiny_cfg.base)
    acts = extract(model, tiny_cfg.task.p, tiny_cfg.activations, "k" * 16)
    p = tiny_cfg.task.p
    assert acts.ood is not None and acts.ood_rows is not None
    # ood_frac 0.2 of 11 operands -> 2 held out: the 2 x 2 pairs with both a, b in {9, 10}.
    assert sorted(acts.ood_rows.tolist()) == [9 * p + 9, 9 * p + 10, 10 * p + 9, 10 * p + 10]
    n_in = p * p - 4
    assert acts.train.shape[0] + acts.eval.shape[0] == n_in
    assert acts.eval.shape[0] == n_in - round(0.75 * n_in)
    rows = [set(r.tolist()) for r in (acts.train_rows, acts.eval_rows, acts.ood_rows)]
    assert sum(len(r) for r in rows) == len(set().union(*rows)) == p * p  # a partition
    assert acts.d_in == tiny_cfg.base.d_model
    _, cache = model.run_with_cache(make_modular_data(p).tokens, names_filter=acts.hook)
    expected = cache[acts.hook][:, -1]
    assert torch.allclose(acts.eval, expected[acts.eval_rows])
    assert torch.allclose(acts.ood, expected[acts.ood_rows])
    back = load_activations(save_activations(acts, tmp_path / "entry"), acts.key)
    assert torch.equal(back.ood_rows, acts.ood_rows) and torch.equal(back.train, acts.train)


def test_corrupt_cache_names_the_file(tiny_cfg: ExperimentConfig, tmp_path: Path) -> None:
    model = build_model(tiny_cfg.task, tiny_cfg.base)
    acts = extract(model, tiny_cfg.task.p, tiny_cfg.activations, "k" * 16)
    path = save_activations(acts, tmp_path / "entry")
    with pytest.raises(ActivationCacheError, match="expected"):
        load_activations(path, "0" * 16)  # an entry filed under the wrong key
    (path / "acts.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ActivationCacheError, match=str(path)):
        load_activations(path, acts.key)


def test_unknown_hook_fails_before_training(tiny_cfg: ExperimentConfig) -> None:
    with pytest.raises(ConfigError, match="activations.hook: 'blocks.7.hook_resid_post'"):
        check_hook(with_acts(tiny_cfg, hook="blocks.7.hook_resid_post"))
    check_hook(with_acts(tiny_cfg, hook="blocks.0.hook_mlp_out"))  # a real hook passes


def test_attention_hooks_are_flattened(tiny_cfg: ExperimentConfig) -> None:
    cfg = with_acts(tiny_cfg, hook="blocks.0.attn.hook_z")
    acts = extract(build_model(cfg.task, cfg.base), cfg.task.p, cfg.activations, "k" * 16)
    assert acts.d_in == tiny_cfg.base.n_heads * tiny_cfg.base.d_head


def test_pt_user_file_and_stable_key(tmp_path: Path) -> None:
    path = user_acts(tmp_path, ".pt")
    a = load_user_activations(path, ActivationsConfig())
    b = load_user_activations(path, ActivationsConfig())
    c = load_user_activations(path, ActivationsConfig(split_seed=1))
    assert a.key == b.key != c.key
    assert a.eval.shape[0] == 80 and a.p is None


def test_user_files_are_never_unpickled(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"not": "a tensor"}))
    with pytest.raises(ActivationCacheError, match=str(evil)):
        load_user_activations(evil, ActivationsConfig())
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}] * 8, dtype=object), allow_pickle=True)
    with pytest.raises(ActivationCacheError, match=str(obj)):
        load_user_activations(obj, ActivationsConfig())
