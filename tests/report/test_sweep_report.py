"""The sweep report's pure parts: the Pareto front, the trials table built from run views, the
Markdown table. (The whole report logged to a real sweep run: tests/run/test_pipeline.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from husai import names
from husai.registry.views import RunView
from husai.report.plots import MISSING_RGB, plot_stability_heatmap
from husai.report.sweep_report import (
    LAYER,
    _slice,
    layer_of,
    markdown_table,
    pareto_front,
    trials_table,
)
from tests.helpers import PNG_MAGIC


def test_pareto_front_keeps_exactly_the_undominated_points() -> None:
    fvu = np.array([0.10, 0.20, 0.05, 0.30, 0.10, 0.05])
    stab = np.array([0.50, 0.70, 0.40, 0.60, 0.50, 0.30])
    # 3 (0.30, 0.60) is dominated by 1; 4 ties 0 (neither dominates the other); 5 by 2.
    assert pareto_front(fvu, stab).tolist() == [2, 0, 4, 1]
    assert pareto_front(np.array([0.1]), np.array([0.2])).tolist() == [0]
    assert pareto_front(np.array([]), np.array([])).tolist() == []


def run(run_id: str, kind: str, status: str = "FINISHED", **metrics: float) -> RunView:
    params = {names.PARAM_ARCHITECTURE: "topk", names.PARAM_K: "8", names.PARAM_D_SAE: "64"}
    tags = {names.TAG_KIND: kind}
    if status == "KILLED":
        tags[names.TAG_STOPPED_EARLY] = "true"
    return RunView(run_id, "1", run_id, status, 0, None, params, metrics, tags)


def test_trials_table_has_one_row_per_trial_and_absent_is_not_zero() -> None:
    runs = [
        run("a", names.KIND_TRIAL, **{names.STABILITY_PW_MCC: 0.6, names.RECON_EV: 0.9}),
        run("b", names.KIND_TRIAL, "KILLED", **{names.RECON_FVU: 0.3}),
        run("c", names.KIND_SEED, **{names.RECON_EV: 0.1}),  # a seed run: not a row
    ]
    df = trials_table(runs)
    assert df["run_id"].tolist() == ["a", "b"]
    assert df["status"].tolist() == ["finished", "stopped early"]
    assert df[names.PARAM_K].tolist() == [8, 8] and math.isnan(df[names.PARAM_LAMBDA][0])
    assert df[names.STABILITY_PW_MCC][0] == 0.6 and math.isnan(df[names.STABILITY_PW_MCC][1])
    md = markdown_table(df)
    assert md.count("\n") == 2 + 2 and "| stopped early |" in md and "absent" in md
    assert "| 0 |" not in md
    assert list(trials_table([]).columns) == list(df.columns)  # the columns without a trial


def test_heatmap_is_a_png(tmp_path: Path) -> None:
    m = np.full((3, 3), np.nan)
    m[0, 1] = m[1, 0] = 0.5
    mats = {"pw_mcc": m, "mmcs": m}
    out = plot_stability_heatmap(mats, mats, [0, 1, 2], tmp_path / "h.png", title="t")
    assert out.read_bytes()[:8] == PNG_MAGIC
    # A pair that could not be computed is MISSING_RGB ("n/a"), never coloured as a value.
    grey = MISSING_RGB
    assert grey in {c for _, c in Image.open(out).convert("RGB").getcolors(1 << 20)}
    full = {"pw_mcc": np.full((3, 3), 0.5), "mmcs": np.full((3, 3), 0.5)}
    out = plot_stability_heatmap(full, full, [0, 1, 2], tmp_path / "f.png")
    assert grey not in {c for _, c in Image.open(out).convert("RGB").getcolors(1 << 20)}


def test_an_ablation_grid_is_drawn_as_its_two_sweeps(tmp_path: Path) -> None:
    """k 8-64 at d_sae 128 plus d_sae 64-512 at k 32: stability vs k is drawn at d_sae 128,
    vs d_sae at k 32 (not every trial against each axis)."""
    points = [(8, 128), (16, 128), (32, 128), (64, 128), (32, 64), (32, 256), (32, 512)]
    df = pd.DataFrame(
        {
            "status": "finished",
            names.PARAM_K: [k for k, _ in points],
            names.PARAM_D_SAE: [d for _, d in points],
        }
    )
    by_k, at_k = _slice(df, names.PARAM_K)
    assert sorted(by_k[names.PARAM_K]) == [8, 16, 32, 64] and at_k == " at d_sae 128"
    by_d, at_d = _slice(df, names.PARAM_D_SAE)
    assert sorted(by_d[names.PARAM_D_SAE]) == [64, 128, 256, 512] and at_d == " at k 32"
    # One axis swept alone: every trial is drawn.
    alone = df[df[names.PARAM_D_SAE] == 128]
    drawn, at = _slice(alone, names.PARAM_K)
    assert len(drawn) == 4 and at == ""


def test_a_scaling_grid_is_drawn_against_layer_and_budget_at_one_d_sae() -> None:
    """layers x budgets x d_sae: stability vs layer is drawn at one budget and d_sae, vs
    budget at one hook and d_sae; a hook outside `blocks.<n>.` has no layer."""
    assert layer_of("blocks.3.hook_resid_post") == 3.0
    assert math.isnan(layer_of("hook_embed")) and math.isnan(layer_of(None))
    points = [(h, b, d) for h in (0, 2, 4) for b in (5e4, 1e5) for d in (1024, 2048)]
    df = pd.DataFrame(
        {
            "status": "finished",
            names.PARAM_K: 32,
            names.PARAM_D_SAE: [d for _, _, d in points],
            names.PARAM_HOOK: [f"blocks.{h}.hook_resid_post" for h, _, _ in points],
            LAYER: [float(h) for h, _, _ in points],
            names.PARAM_LM_TOKEN_BUDGET: [b for _, b, _ in points],
        }
    )
    by_layer, at = _slice(df, LAYER)
    assert sorted(by_layer[LAYER]) == [0.0, 2.0, 4.0]
    assert at == " at d_sae 1024, lm_token_budget 50000"
    by_budget, at = _slice(df, names.PARAM_LM_TOKEN_BUDGET)
    assert sorted(by_budget[names.PARAM_LM_TOKEN_BUDGET]) == [5e4, 1e5]
    assert at == " at d_sae 1024, hook blocks.0.hook_resid_post"
    # Two hooks of one layer are different rows: the k plot holds one of them.
    kinds = pd.DataFrame(
        {
            "status": "finished",
            names.PARAM_K: [4, 8, 4, 8],
            names.PARAM_HOOK: ["blocks.0.hook_mlp_out"] * 2 + ["blocks.0.hook_resid_post"] * 2,
            LAYER: 0.0,
        }
    )
    by_k, at = _slice(kinds, names.PARAM_K)
    assert len(by_k) == 2 and at == " at hook blocks.0.hook_mlp_out"
