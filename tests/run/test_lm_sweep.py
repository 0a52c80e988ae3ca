"""The shipped scaling sweep (`sweeps/lm_scaling.yaml`) end to end on a tiny language model:
`husai pipeline --smoke yes` runs every (layer, token budget) pair as its own activation set,
confirms the best recipe, reports stability vs layer and vs budget, and gates the candidate.
The model is a 2-layer TransformerLens model built from a config with its own tokenizer
(`tests.helpers.tiny_lm`); nothing is downloaded.

The file is the shipped one with only what names Pythia-70M and its corpus swapped for the
tiny model's: the model, the corpus, the context size, and the grid's values (two of the tiny
model's layers, two budgets its corpus can fill, one d_sae)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from husai import names
from husai.config.sweep.spec import load_sweep
from husai.core.errors import ConfigError
from husai.registry.tracking import Tracker
from husai.run.pipeline import run_pipeline
from husai.run.sweep.driver import run_sweep
from tests.helpers import ROOT, lm_activations_cfg, runs_of_kind, tiny_lm, write_sweep

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
BUDGETS = [800, 1500]


def _tiny_scaling_sweep(tmp_path: Path) -> Path:
    model, corpus = tiny_lm(tmp_path / "lm")
    data = yaml.safe_load((ROOT / "sweeps" / "lm_scaling.yaml").read_text())
    acts = data["experiment"]["activations"]
    acts["eval_frac"] = 0.2
    acts["lm"].update(model=str(model), corpus=str(corpus), context_size=16, token_budget=1500)
    space = data["search_space"]
    space["sae.d_sae"]["choices"] = [64]
    space["activations.hook"]["choices"] = HOOKS
    space["activations.lm.token_budget"]["choices"] = BUDGETS
    path = tmp_path / "lm_scaling.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow
def test_the_scaling_sweep_runs_every_layer_and_budget_and_draws_them(
    tmp_path: Path, isolated_store: str
) -> None:
    path = _tiny_scaling_sweep(tmp_path)
    result = run_pipeline(path, ROOT / "gates" / "default.yaml", True, isolated_store)
    out = result.sweep
    assert out.n_trials == 4 and out.n_recorded == 4
    tracker = Tracker(isolated_store)
    trials = [r for r in runs_of_kind(tracker, names.KIND_TRIAL) if r.info.status == "FINISHED"]
    search = [t for t in trials if t.data.tags.get(names.TAG_ACTIVATION_SOURCE) == "sweep"]
    p = names.PARAM_HOOK, names.PARAM_LM_TOKEN_BUDGET
    got = sorted((t.data.params[p[0]], int(t.data.params[p[1]])) for t in search)
    assert got == sorted((h, b) for h in HOOKS for b in BUDGETS)  # every combination once
    # Each pair trained on its own set, and measured with the LM's metrics and every null.
    assert len({t.data.params[names.PARAM_ACTIVATION_KEY] for t in search}) == 4
    for t in search:
        assert names.RECON_LOSS_RECOVERED in t.data.metrics
        assert names.RECON_LOSS_RECOVERED_ZERO in t.data.metrics
        for null in names.NULLS:
            key = names.stability_key(names.STABILITY_PW_MCC, names.null_suffix(null))
            assert key in t.data.metrics, (key, null)
    # The driver extracted the four sets (and their random-base twins) before any trial; the
    # confirmation's fresh split is a fifth.
    assert len(runs_of_kind(tracker, names.KIND_ACTIVATIONS)) == 5
    assert len(runs_of_kind(tracker, names.KIND_NULL_ACTIVATIONS)) == 5
    assert out.confirm_run_id is not None and out.sae_version is not None
    assert result.report is not None
    assert {"stability_vs_layer.png", "stability_vs_lm_token_budget.png"} <= set(
        result.report.files
    )
    # The gate judged the candidate and wrote its reasons on the version.
    mv = tracker.model_version(names.SAE_MODEL_NAME, out.sae_version, None)
    assert mv is not None and names.gate_tag("default", "pass_all") in mv.tags

    # The same sweep again: every set found, the finished sweep reused, nothing trained.
    again = run_sweep(path, smoke=True, tracking_uri=isolated_store)
    assert again.reused and again.sweep_run_id == out.sweep_run_id
    assert len(runs_of_kind(tracker, names.KIND_ACTIVATIONS)) == 5


def test_activation_fields_take_listed_values_from_a_source_that_has_them(
    tmp_path: Path,
) -> None:
    acts = lm_activations_cfg(tmp_path / "model", tmp_path / "corpus.jsonl")
    budget = {"type": "int", "low": 800, "high": 1600}
    path = write_sweep(
        tmp_path,
        experiment={"activations": acts},
        search_space={"activations.lm.token_budget": budget},
    )
    with pytest.raises(ConfigError, match="search_space.activations.lm.token_budget: type"):
        load_sweep(path)
    task = write_sweep(
        tmp_path,
        search_space={"activations.lm.token_budget": {"type": "categorical", "choices": [1]}},
    )
    with pytest.raises(ConfigError, match="only a language-model source has it"):
        load_sweep(task)
    # A listed hook sweep of a language model loads; each value is one set.
    listed = {"type": "categorical", "choices": HOOKS}
    ok = write_sweep(
        tmp_path, experiment={"activations": acts}, search_space={"activations.hook": listed}
    )
    assert load_sweep(ok).activation_points() == [{"activations.hook": h} for h in HOOKS]
