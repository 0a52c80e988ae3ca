"""Sweep files: typed, validated up front, impossible corners refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from husai.config.sweep.confirm import confirm_config, confirm_seeds, recipe_from_params
from husai.config.sweep.spec import load_sweep
from husai.core.errors import ConfigError
from tests.helpers import ROOT

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_the_shipped_sweeps_exist() -> None:
    assert {p.stem for p in SWEEPS} >= {"quick", "k_dsae", "architectures", "consistency_lambda"}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_shipped_sweeps_load(path: Path) -> None:
    sweep = load_sweep(path)
    assert sweep.base_experiment().name == sweep.name
    assert sweep.base_experiment(smoke=True).train.steps <= sweep.base_experiment().train.steps


def test_consistency_sweep_spans_zero_and_the_log_range() -> None:
    s = load_sweep(SWEEPS[0].parent / "consistency_lambda.yaml")
    lam = s.search_space["consistency.lambda"]
    assert lam.zero and (lam.low, lam.high) == (0.001, 1.0)
    assert {"sae.k", "sae.d_sae"} <= set(s.search_space)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


BASE = "name: t\nexperiment: {preset: quick}\nobjective: [{metric: recon/ev, mode: max}]\n"


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ("search_space: {sae.kk: {type: categorical, choices: [1]}}", "cannot sweep 'sae.kk'"),
        ("search_space: {sae.k: {type: categorical}}", "search_space.sae.k"),
        ("search_space: {}\nnum_sampels: 3", "num_sampels: unknown field"),
        ("search_space: {consistency.lambda: {type: loguniform, low: 0, high: 1}}", "low > 0"),
        (
            "search_space: {sae.k: {type: categorical, choices: [8, 64]}, "
            "sae.d_sae: {type: categorical, choices: [32, 512]}}",
            "sae.k can reach 64 but sae.d_sae can be as small as 32",
        ),
    ],
)
def test_schema_errors_name_the_field(tmp_path: Path, extra: str, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect.replace(".", r"\.")):
        load_sweep(write(tmp_path, BASE + extra))


def test_bad_objective_metric(tmp_path: Path) -> None:
    text = (
        "name: t\nexperiment: {}\nsearch_space: {}\nobjective: [{metric: recon/evv, mode: max}]\n"
    )
    with pytest.raises(ConfigError, match="objective.0: metric: 'recon/evv'"):
        load_sweep(write(tmp_path, text))


def test_trial_config_sets_the_sampled_values(tmp_path: Path) -> None:
    s = load_sweep(SWEEPS[0].parent / "quick.yaml")
    cfg = s.trial_config({"sae.k": 8, "sae.d_sae": 256, "consistency.lambda": 0.5}, smoke=True)
    assert (cfg.sae.k, cfg.sae.d_sae, cfg.consistency.lam) == (8, 256, 0.5)
    assert cfg.train.steps == 60 and cfg.name == "quick_sweep"


def test_asha_is_refused_for_an_objective_it_does_not_schedule_on(tmp_path: Path) -> None:
    """ASHA stops trials by their running held-out FVU: on a stability sweep it would prune
    trials by a number the sweep does not optimise, so the file must turn it off."""
    text = (
        "name: t\nexperiment: {preset: quick}\n"
        "search_space: {sae.k: {type: categorical, choices: [8]}}\n"
        "objective: [{metric: stability/pw_mcc_excess_surrogate_lcb, mode: max}]\n"
    )
    assert not load_sweep(write(tmp_path, text)).asha.enabled  # off by default
    with pytest.raises(ConfigError, match=r"asha\.enabled: ASHA stops trials by their running"):
        load_sweep(write(tmp_path, text + "asha: {enabled: true}\n"))
    space = "search_space: {sae.k: {type: categorical, choices: [8]}}\n"
    ok = load_sweep(write(tmp_path, BASE + space + "asha: {enabled: true}\n"))
    assert ok.asha.enabled  # recon/ev: what ASHA ranks by


@pytest.mark.parametrize(
    "space",
    [
        "{consistency.lambda: {type: loguniform, low: 0.001, high: 1.0, zero: true}}",
        "{sae.k: {type: categorical, choices: [8]}}\n"
        "experiment: {preset: quick, consistency: {lambda: 0.1}}",
    ],
)
def test_a_lambda_sweep_must_use_an_objective_copying_cannot_inflate(
    tmp_path: Path, space: str
) -> None:
    head = "name: t\n" + ("" if "experiment" in space else "experiment: {preset: quick}\n")
    for metric, ok in (
        ("stability/pw_mcc_excess_surrogate_lcb", False),
        ("stability/pw_mcc", False),
        ("stability/independent_pw_mcc_excess_surrogate_lcb", True),
        ("stability/independent_pw_mcc_excess_random_base_lcb", True),
        ("consistency/independent_gain_lcb", True),
        ("recon/ev", True),
    ):
        text = head + f"search_space: {space}\nobjective: [{{metric: {metric}, mode: max}}]\n"
        if ok:
            load_sweep(write(tmp_path, text))
        else:
            with pytest.raises(ConfigError, match=f"objective: {metric} compares seeds pulled"):
                load_sweep(write(tmp_path, text))


def test_confirmation_seeds_are_fresh_and_the_split_too() -> None:
    s = load_sweep(SWEEPS[0].parent / "quick.yaml")
    params = {"sae.k": 16, "sae.d_sae": 256, "consistency.lambda": 0.01}
    search = s.trial_config(params)
    cfg = confirm_config(s, params, smoke=False)
    t = search.trial
    used = {*t.seeds, *(x + t.random_seed_offset for x in t.seeds), *t.surrogate_seeds()}
    used |= {search.consistency.ref_seed}
    assert len(cfg.trial.seeds) == s.confirm.n_seeds == 5
    assert not set(cfg.trial.seeds) & used
    assert cfg.activations.split_seed == search.activations.split_seed + 1
    assert (cfg.sae, cfg.consistency, cfg.train) == (search.sae, search.consistency, search.train)
    assert cfg.config_hash() != search.config_hash()
    assert len(confirm_config(s, params, smoke=True).trial.seeds) == s.smoke.confirm_seeds
    # Taken: the search seeds 0, 1 and their untrained and surrogate seeds 3, 4 and 6, 7; then 2
    # takes 5 and 8 for its own: 9 and 10 are next.
    crowded = search.model_copy(
        update={"trial": t.model_copy(update={"seeds": (0, 1), "random_seed_offset": 3})}
    )
    assert confirm_seeds(crowded, 3) == (2, 9, 10)


def test_an_objective_must_name_its_null() -> None:
    with pytest.raises(ConfigError, match="names no null .* e.g. 'stability/pw_mcc_excess_surr"):
        load_sweep_text("stability/pw_mcc_excess_lcb")


def load_sweep_text(metric: str) -> object:
    from husai.config.sweep.parts import Objective

    try:
        return Objective.model_validate({"metric": metric, "mode": "max"})
    except ValueError as e:
        raise ConfigError(str(e)) from None


def test_the_recipe_is_read_back_from_a_trial_runs_params() -> None:
    s = load_sweep(SWEEPS[0].parent / "quick.yaml")
    params = {"k": "16", "d_sae": "256", "lambda": "0.0022727", "architecture": "topk"}
    assert recipe_from_params(s, params) == {
        "sae.k": 16,
        "sae.d_sae": 256,
        "consistency.lambda": 0.0022727,
    }
    # The scaling sweep's activation fields: read back typed, and set where they live.
    scaling = load_sweep(SWEEPS[0].parent / "lm_scaling.yaml")
    hook = "blocks.2.hook_resid_post"
    got = recipe_from_params(scaling, {"d_sae": "1024", "hook": hook, "lm_token_budget": "50000"})
    assert got == {
        "sae.d_sae": 1024,
        "activations.hook": hook,
        "activations.lm.token_budget": 50000,
    }
    cfg = scaling.trial_config(got)
    assert (cfg.activations.hook, cfg.activations.lm.token_budget) == (hook, 50000)
    assert cfg.activations.lm.model == "pythia-70m-deduped"  # the rest of the section kept


def test_grid_points_run_each_combination_once(tmp_path: Path) -> None:
    """The ablation as one file: sub-grids, their shared point once, file order kept."""
    s = load_sweep(SWEEPS[0].parent / "ablation_grid.yaml")
    points = [(p["sae.k"], p["sae.d_sae"]) for p in s.grid_points()]
    assert points == [(8, 128), (16, 128), (32, 128), (64, 128), (32, 64), (32, 256), (32, 512)]
    assert s.n_trials() == 7 and s.n_trials(smoke=True) == 2
    assert s.swept_paths() == ["sae.k", "sae.d_sae"]
    # Grid dimensions in the search space cross each other and each sub-grid; a sampled
    # dimension beside them is drawn num_samples times per point.
    mixed = load_sweep(
        write(
            tmp_path,
            BASE + "search_space:\n"
            "  sae.k: {type: grid, choices: [8, 16]}\n"
            "  train.lr: {type: loguniform, low: 0.0001, high: 0.01}\n"
            "grids: [{sae.d_sae: [64]}, {sae.d_sae: [128], sae.architecture: [topk, batchtopk]}]\n"
            "num_samples: 2\n",
        )
    )
    assert len(mixed.grid_points()) == 2 * (1 + 2) and mixed.n_trials() == 12
    assert mixed.grid_points()[0] == {"sae.k": 8, "sae.d_sae": 64}
    assert set(mixed.sampled_space()) == {"train.lr"}
    assert mixed.swept_paths() == ["sae.k", "train.lr", "sae.d_sae", "sae.architecture"]


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ("grids: [{sae.kk: [8]}]", "s.yaml: grids[0]: cannot sweep 'sae.kk'"),
        ("grids: [{sae.k: []}]", "grids[0].sae.k: give at least one value"),
        ("grids: [{}]", "grids[0]: a sub-grid needs at least one path"),
        (
            "search_space: {sae.k: {type: grid, choices: [8]}}\ngrids: [{sae.k: [16]}]",
            "grids[0].sae.k: also in search_space",
        ),
        ("grids: [{sae.k: [8]}]\nnum_samples: 3", "num_samples: a sweep of grid points only"),
        (
            "grids: [{sae.k: [8]}]\n"
            "search_space: {consistency.lambda: {type: loguniform, low: 0.1, high: 1, zero: true}}",
            "search_space.consistency.lambda.zero: not with grid dimensions",
        ),
        # Checked point by point, as whole recipes, naming the point.
        ("grids: [{sae.k: [8, 64], sae.d_sae: [32]}]", "grid point 2 {'sae.k': 64, 'sae.d_sae'"),
        ("grids: [{sae.architecture: [topk, nope]}]", "grid point 2 {'sae.architecture': 'nope'}"),
        (
            "grids: [{sae.d_sae: [16, 512]}]\n"
            "search_space: {sae.k: {type: categorical, choices: [8, 32]}}",
            "sae.k can reach 32 but sae.d_sae can be as small as 16 at grid point",
        ),
    ],
)
def test_grid_errors_name_the_field_or_point(tmp_path: Path, extra: str, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect.replace(".", r"\.").replace("[", r"\[")):
        load_sweep(write(tmp_path, BASE + extra))
