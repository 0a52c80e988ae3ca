"""Typed configs: validation names the field and the file; the hash is stable."""

from __future__ import annotations

from pathlib import Path

import pytest

from husai.config.experiment import ExperimentConfig
from husai.config.loading import from_dict, load, load_preset
from husai.core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_presets_load_and_differ() -> None:
    quick, paper = load_preset("quick"), load_preset("paper")
    assert paper.task.p == 113 and paper.task.train_frac == 0.3
    assert paper.base.n_layers == 1 and paper.base.d_model == 128
    assert quick.task.p < paper.task.p
    assert quick.base_hash() != paper.base_hash()


def test_defaults_follow_the_design() -> None:
    cfg = ExperimentConfig()
    assert cfg.base.weight_decay == 1.0 and cfg.base.betas == (0.9, 0.98)
    assert cfg.base.lr == 1e-3 and not cfg.base.layernorm and cfg.base.act_fn == "relu"
    assert cfg.activations.hook == "blocks.0.hook_resid_post" and cfg.activations.eval_frac == 0.2


@pytest.mark.parametrize(
    ("text", "field", "why"),
    [
        ("task: {p: 59, train_fracc: 0.5}", "task.train_fracc", "unknown field"),
        ("task: {train_frac: 1.5}", "task.train_frac", "strictly between 0 and 1"),
        ("task: {train_frac: 0}", "task.train_frac", "strictly between 0 and 1"),
        ("task: {p: 2}", "task.p", "prime >= 3"),
        ("task: {p: 15}", "task.p", "prime >= 3"),
        ("base: {d_model: 30, n_heads: 4}", "base", "does not divide"),
        ("activations: {position: 5}", "activations.position", "less than or equal to 2"),
        ("bogus: 1", "bogus", "unknown field"),
    ],
)
def test_errors_name_field_and_file(tmp_path: Path, text: str, field: str, why: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {field}"), msg
    assert why in msg
    assert "\n" not in msg


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "task:\n  p: 59\n  train_frac: [0.5\n")
    with pytest.raises(ConfigError, match=rf"{path}: invalid YAML at line \d+"):
        load(path)


def test_non_mapping_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.yaml")


def test_preset_with_overrides_and_unknown_preset(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "preset: quick\ntask: {data_seed: 7}\n"))
    assert cfg.task.data_seed == 7
    assert cfg.task.p == load_preset("quick").task.p  # the rest of the section is kept
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        load(write(tmp_path, "preset: fast\n"))


def test_hash_is_stable_and_sensitive() -> None:
    a = from_dict({"task": {"p": 59, "train_frac": 0.5}, "base": {"lr": 0.003}})
    b = from_dict({"base": {"lr": 0.003}, "task": {"train_frac": 0.5, "p": 59}})
    assert a.config_hash() == b.config_hash() and a.base_hash() == b.base_hash()
    assert len(a.base_hash()) == 16
    # The base model's identity ignores the activation request but not its own settings.
    c = from_dict({**a.model_dump(), "activations": {"split_seed": 9}})
    assert c.base_hash() == a.base_hash() and c.config_hash() != a.config_hash()
    d = from_dict({**a.model_dump(), "base": {**a.base.model_dump(), "init_seed": 1}})
    assert d.base_hash() != a.base_hash()


def test_hash_is_pinned() -> None:
    """The hash is the key of every registered base model: a change orphans them all, so it
    may only change on purpose (new field or new default), updating these values."""
    assert load_preset("quick").base_hash() == "98b32df7cf840a73"
    assert ExperimentConfig().base_hash() == "2a6930b9b9299be8"


def test_activation_source_is_not_part_of_the_experiment_hash() -> None:
    a = load_preset("quick")
    b = from_dict(
        {**a.model_dump(), "activations": {**a.activations.model_dump(), "key": "ab" * 8}}
    )
    assert a.config_hash() == b.config_hash()
    with pytest.raises(ConfigError, match="give at most one activation source"):
        from_dict({"activations": {"key": "ab" * 8, "file": "x.npy"}})


def test_lambda_zero_hash_ignores_reference_settings() -> None:
    a = from_dict({"consistency": {"lambda": 0.0, "ref_seed": 10_000}})
    b = from_dict({"consistency": {"lambda": 0.0, "ref_seed": 20_000, "assign_every": 7}})
    c = from_dict({"consistency": {"lambda": 0.1, "ref_seed": 20_000}})
    d = from_dict({"consistency": {"lambda": 0.1, "ref_seed": 10_000}})
    assert a.config_hash() == b.config_hash()
    assert c.config_hash() != d.config_hash()
    assert from_dict({"trial": {"register_sae": False}}).config_hash() == a.config_hash()


def test_removed_trial_fields_are_refused_with_why() -> None:
    with pytest.raises(ConfigError, match="bootstrap_samples: removed in metric_version 3"):
        from_dict({"trial": {"bootstrap_samples": 200}})
    with pytest.raises(ConfigError, match="trial.nulls"):
        from_dict({"trial": {"nulls": ["isotropic", "shuffled"]}})
    with pytest.raises(ConfigError, match="each null at most once"):
        from_dict({"trial": {"nulls": ["covariance", "covariance"]}})
    assert from_dict({}).trial.nulls == ("isotropic", "covariance", "surrogate", "random_base")
    with pytest.raises(ConfigError, match="control_ref_seed: removed in metric_version 6"):
        from_dict({"consistency": {"control_ref_seed": 10_001}})
