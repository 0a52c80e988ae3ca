"""Activations: content-addressed cache (disk, then MLflow), held-out split, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from husai import names
from husai.activations import (
    ActivationCacheError,
    activation_key,
    check_hook,
    get_or_extract,
    load_activations,
)
from husai.base_model import get_or_train
from husai.config import ConfigError, ExperimentConfig, from_dict
from husai.tracking import Tracker


def with_acts(cfg: ExperimentConfig, **acts: object) -> ExperimentConfig:
    return from_dict({**cfg.model_dump(), "activations": {**cfg.activations.model_dump(), **acts}})


def test_key_depends_on_every_input(tracker: Tracker, tiny_cfg: ExperimentConfig) -> None:
    base = get_or_train(tiny_cfg, tracker, progress=False)
    k = activation_key(base, tiny_cfg.activations)
    assert k == activation_key(base, tiny_cfg.activations)
    variants = [
        with_acts(tiny_cfg, hook="blocks.0.hook_mlp_out"),
        with_acts(tiny_cfg, position=0),
        with_acts(tiny_cfg, split_seed=1),
        with_acts(tiny_cfg, eval_frac=0.5),
    ]
    keys = {activation_key(base, v.activations) for v in variants}
    assert k not in keys and len(keys) == 4


def test_miss_then_hit_from_disk_then_from_mlflow(
    tracker: Tracker, tiny_cfg: ExperimentConfig
) -> None:
    base = get_or_train(tiny_cfg, tracker, progress=False)
    miss = get_or_extract(tiny_cfg, base, tracker)
    assert not miss.cache_hit and miss.source == "computed"
    run = tracker.client.get_run(miss.run_id)
    assert run.data.params[names.PARAM_ACTIVATION_KEY] == miss.acts.key
    assert run.data.params[names.PARAM_BASE_VERSION] == base.version
    assert run.data.tags[names.TAG_CACHE] == "miss"

    hit = get_or_extract(tiny_cfg, base, tracker)
    assert hit.cache_hit and hit.source == "disk" and hit.run_id == miss.run_id
    assert torch.equal(hit.acts.eval, miss.acts.eval)

    shutil.rmtree(miss.path)  # a new machine: the local cache is gone, MLflow still has it
    again = get_or_extract(tiny_cfg, base, tracker)
    assert again.cache_hit and again.source == "mlflow" and again.run_id == miss.run_id
    assert torch.equal(again.acts.train, miss.acts.train)
    exp = tracker.client.get_experiment_by_name(names.EXPERIMENT_ACTIVATIONS)
    assert len(tracker.client.search_runs([exp.experiment_id])) == 1


def test_rows_are_split_and_match_the_model(tracker: Tracker, tiny_cfg: ExperimentConfig) -> None:
    from husai.data import make_modular_data

    base = get_or_train(tiny_cfg, tracker, progress=False)
    h = get_or_extract(tiny_cfg, base, tracker)
    acts = h.acts
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
    _, cache = base.model.run_with_cache(make_modular_data(p).tokens, names_filter=acts.hook)
    expected = cache[acts.hook][:, -1]
    assert torch.allclose(acts.eval, expected[acts.eval_rows])
    assert torch.allclose(acts.ood, expected[acts.ood_rows])
    assert torch.equal(load_activations(h.path, h.acts.key).ood_rows, acts.ood_rows)


def test_corrupt_cache_names_the_file(tracker: Tracker, tiny_cfg: ExperimentConfig) -> None:
    base = get_or_train(tiny_cfg, tracker, progress=False)
    h = get_or_extract(tiny_cfg, base, tracker)
    with pytest.raises(ActivationCacheError, match="expected"):
        load_activations(h.path, "0" * 16)  # an entry filed under the wrong key
    (h.path / "acts.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ActivationCacheError, match=str(h.path)):
        get_or_extract(tiny_cfg, base, tracker)


def test_unknown_hook_fails_before_training(tiny_cfg: ExperimentConfig) -> None:
    with pytest.raises(ConfigError, match="activations.hook: 'blocks.7.hook_resid_post'"):
        check_hook(with_acts(tiny_cfg, hook="blocks.7.hook_resid_post"))
    check_hook(with_acts(tiny_cfg, hook="blocks.0.hook_mlp_out"))  # a real hook passes


def test_attention_hooks_are_flattened(tracker: Tracker, tiny_cfg: ExperimentConfig) -> None:
    cfg = with_acts(tiny_cfg, hook="blocks.0.attn.hook_z")
    base = get_or_train(cfg, tracker, progress=False)
    acts = get_or_extract(cfg, base, tracker).acts
    assert acts.d_in == tiny_cfg.base.n_heads * tiny_cfg.base.d_head


def test_cache_lives_where_told(
    tracker: Tracker, tiny_cfg: ExperimentConfig, tmp_path: Path
) -> None:
    base = get_or_train(tiny_cfg, tracker, progress=False)
    h = get_or_extract(tiny_cfg, base, tracker, cache_dir=tmp_path / "elsewhere")
    assert h.path.is_relative_to(tmp_path / "elsewhere")
