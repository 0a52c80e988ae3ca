"""The report of one sweep, logged to its sweep run under `report/`:

- `stability_vs_k.png`, `stability_vs_d_sae.png` (and `stability_vs_layer.png`,
  `stability_vs_lm_token_budget.png` where the sweep varies the hook's layer or a language
  model's token budget): pw_mcc and mmcs of each finished trial with the 95% interval of its
  excess over the surrogate null (the calibrated one) drawn around the trained value, and a
  band per null (untrained initialisations, isotropic, covariance, surrogate, random base);
- `pareto.png`: pw_mcc against held-out FVU, the Pareto front (lower FVU, higher pw_mcc) marked;
- `lambda_effect.png` (when a trial has lambda > 0): pw_mcc, alignment to the reference and EV
  against lambda;
- `best_trial_heatmap.png`: the best trial's pairwise PW-MCC heatmap (copied from its run);
- `trials.csv`, `trials.md`, and `report.html`: one self-contained page (plots embedded).

    husai report --sweep-run <run id>
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from husai import names  # noqa: E402
from husai.config.experiment import hook_layer  # noqa: E402
from husai.registry.tracking import Tracker  # noqa: E402
from husai.registry.views import RunView  # noqa: E402

# The excess the plots draw and the table leads with: over the calibrated null.
HEADLINE_NULL = names.NULL_SURROGATE
EXCESS = tuple(names.excess_suffix(HEADLINE_NULL, b) for b in names.BOUNDS)
TABLE_METRICS = (
    names.STABILITY_PW_MCC,
    *(names.stability_key(names.STABILITY_PW_MCC, names.null_suffix(n)) for n in names.NULLS),
    names.stability_key(names.STABILITY_PW_MCC, EXCESS[0]),
    names.stability_key(names.STABILITY_PW_MCC, EXCESS[1]),
    names.stability_key(names.STABILITY_PW_MCC, EXCESS[2]),
    names.stability_key(names.STABILITY_PW_MCC, "_alive"),
    names.stability_key(names.STABILITY_PW_MCC, names.excess_suffix(HEADLINE_NULL, "_lcb", True)),
    names.STABILITY_MMCS,
    names.stability_key(names.STABILITY_MMCS, EXCESS[1]),
    names.STABILITY_SHARED_07,
    names.RECON_EV,
    names.RECON_FVU,
    names.RECON_L0,
    names.RECON_DEAD_FRAC,
    names.RECON_LOSS_RECOVERED,
    names.INDEPENDENT_PW_MCC,
    names.independent_key(HEADLINE_NULL, "_lcb"),
    names.independent_key(names.NULL_RANDOM_BASE, "_lcb"),
    names.CONSISTENCY_ALIGNMENT,
    names.CONSISTENCY_INDEPENDENT_GAIN,
    names.CONSISTENCY_EV_DROP,
    *names.HEADLINE_EVAL_KEYS,
)
# The bands of the stability plots, weakest first: untrained initialisations, then each null.
BANDS = (("_random", "untrained init"), *((names.null_suffix(n), n) for n in names.NULLS))
# What the stability plots need beyond the table: each metric's nulls and excess interval.
PLOT_ONLY = tuple(
    names.stability_key(b, sfx)
    for b in (names.STABILITY_PW_MCC, names.STABILITY_MMCS)
    for sfx in (*(b for b, _ in BANDS), *EXCESS)
    if names.stability_key(b, sfx) not in TABLE_METRICS
)
# The hook's layer (blocks.<n>.), drawn on its own axis: a number, where the hook is a string.
LAYER = "layer"
PARAMS = (
    names.PARAM_ARCHITECTURE,
    names.PARAM_K,
    names.PARAM_D_SAE,
    names.PARAM_LAMBDA,
    names.PARAM_HOOK,
    LAYER,
    names.PARAM_LM_TOKEN_BUDGET,
)
# Axes the stability plots are drawn against: k and d_sae always, the others where they vary.
AXES = (names.PARAM_K, names.PARAM_D_SAE, LAYER, names.PARAM_LM_TOKEN_BUDGET)
ALWAYS_DRAWN = (names.PARAM_K, names.PARAM_D_SAE)
# What a stability plot holds fixed where it varies (`_slice`).
HELD = (names.PARAM_K, names.PARAM_D_SAE, names.PARAM_HOOK, names.PARAM_LM_TOKEN_BUDGET)
HELD_FOR_LAYER = (names.PARAM_K, names.PARAM_D_SAE, names.PARAM_LM_TOKEN_BUDGET)


@dataclass(frozen=True)
class SweepReport:
    files: list[str]  # artifact names under report/
    n_trials: int
    n_finished: int


def trials_table(runs: list[RunView]) -> pd.DataFrame:
    """One row per trial run among `runs` (stopped ones too): params and the gateable keys."""
    rows = []
    for r in runs:
        if r.tags.get(names.TAG_KIND) != names.KIND_TRIAL:
            continue
        p, m = r.params, r.metrics
        stopped = r.tags.get(names.TAG_STOPPED_EARLY) == "true"
        row: dict[str, object] = {
            "run_id": r.run_id,
            "status": "stopped early" if stopped else r.status.lower(),
            names.PARAM_ARCHITECTURE: p.get(names.PARAM_ARCHITECTURE),
            names.PARAM_K: int(p[names.PARAM_K]) if names.PARAM_K in p else None,
            names.PARAM_D_SAE: int(p[names.PARAM_D_SAE]) if names.PARAM_D_SAE in p else None,
            names.PARAM_LAMBDA: float(p.get(names.PARAM_LAMBDA, "nan")),
            names.PARAM_HOOK: p.get(names.PARAM_HOOK),
            LAYER: layer_of(p.get(names.PARAM_HOOK)),
            names.PARAM_LM_TOKEN_BUDGET: float(p.get(names.PARAM_LM_TOKEN_BUDGET, "nan")),
        }
        for key in TABLE_METRICS + PLOT_ONLY:
            row[key] = m.get(key, math.nan)  # NaN in the table = not recorded, never 0
        rows.append(row)
    columns = ["run_id", "status", *PARAMS, *TABLE_METRICS, *PLOT_ONLY]
    return pd.DataFrame(rows, columns=columns)  # the columns even without a single trial


def _finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "finished"] if len(df) else df


def layer_of(hook: str | None) -> float:
    """The layer of a `blocks.<n>.` hook, as a plot axis: NaN for any other."""
    layer = hook_layer(hook)
    return math.nan if layer is None else float(layer)


def _slice(d: pd.DataFrame, param: str) -> tuple[pd.DataFrame, str]:
    """Trials to draw against `param`: where other axes (k, d_sae, hook, token budget) also
    vary, only their values with the most distinct `param` values (an ablation grid's k sweep
    at one d_sae; a scaling grid's layers at one budget and d_sae); and how to say so in the
    title. A hook outside `blocks.<n>.` has no layer and is not on the layer plot."""
    # The hook is held rather than its layer (two hooks of one layer are different rows),
    # except on the layer plot, where the hook is what varies.
    others = HELD_FOR_LAYER if param == LAYER else HELD
    held = [a for a in others if a != param and a in d and d[a].nunique() >= 2]
    if not held:
        return d, ""
    counts = d.groupby(held)[param].nunique()
    at = counts.idxmax()
    values = at if isinstance(at, tuple) else (at,)
    keep = pd.Series(True, index=d.index)
    for a, v in zip(held, values, strict=True):
        keep &= d[a] == v
    said = (
        f"{a} {v:g}" if isinstance(v, int | float) else f"{a} {v}"
        for a, v in zip(held, values, strict=True)
    )
    return d[keep], " at " + ", ".join(said)


def plot_stability_vs(df: pd.DataFrame, param: str, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    d, at = _slice(_finished(df), param)
    d = d.sort_values(param)
    for ax, metric in zip(axes, (names.STABILITY_PW_MCC, names.STABILITY_MMCS), strict=True):
        excess = d[names.stability_key(metric, EXCESS[0])]
        # The interval of (trained - surrogate null), drawn around the trained value.
        below = excess - d[names.stability_key(metric, EXCESS[1])]
        above = d[names.stability_key(metric, EXCESS[2])] - excess
        for lam, g in d.groupby(names.PARAM_LAMBDA):
            idx = g.index
            ax.errorbar(
                g[param],
                g[metric],
                yerr=[below[idx].fillna(0), above[idx].fillna(0)],
                fmt="o",
                capsize=3,
                label=f"trained, lambda {lam:.3g}",
            )
        for (suffix, label), colour in zip(
            BANDS, ("0.75", "0.55", "tab:orange", "tab:green", "tab:red"), strict=True
        ):
            key = names.stability_key(metric, suffix)
            band = d.dropna(subset=[key]).groupby(param)[key].agg(["min", "max"])
            if len(band):
                ax.fill_between(band.index, band["min"], band["max"], color=colour, alpha=0.3)
                ax.plot(band.index, band["max"], color=colour, linewidth=1, label=f"null: {label}")
        if param != LAYER:  # sizes and budgets double; layers count
            ax.set_xscale("log", base=2)
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Stability vs {param}{at} (bars: 95% interval of the excess over the surrogate null)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pareto_front(fvu: np.ndarray, stab: np.ndarray) -> np.ndarray:
    """Indices not dominated by another point with fvu <= and stability >= (one strictly)."""
    keep = []
    for i in range(len(fvu)):
        dominated = np.any(
            (fvu <= fvu[i]) & (stab >= stab[i]) & ((fvu < fvu[i]) | (stab > stab[i]))
        )
        if not dominated:
            keep.append(i)
    return np.array(sorted(keep, key=lambda i: fvu[i]), dtype=int)


def plot_pareto(df: pd.DataFrame, path: Path) -> Path:
    d = _finished(df).dropna(subset=[names.RECON_FVU, names.STABILITY_PW_MCC])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    fvu, stab = d[names.RECON_FVU].to_numpy(), d[names.STABILITY_PW_MCC].to_numpy()
    ax.scatter(fvu, stab, color="tab:blue", label="trials")
    recipes = (d[names.PARAM_K], d[names.PARAM_D_SAE], d[names.PARAM_LAMBDA])
    for x, y, k, ds, lam in zip(fvu, stab, *recipes, strict=True):
        ax.annotate(
            f"k{k} d{ds} λ{lam:.3g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    front = pareto_front(fvu, stab)
    if len(front):
        ax.step(fvu[front], stab[front], where="post", color="tab:red", label="Pareto front")
    ax.set_xlabel(f"{names.RECON_FVU} (held-out, lower is better)")
    ax.set_ylabel(f"{names.STABILITY_PW_MCC} (higher is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_lambda_effect(df: pd.DataFrame, path: Path) -> Path:
    d = _finished(df).sort_values(names.PARAM_LAMBDA)
    # Seed-vs-seed pw_mcc rising while independent pw_mcc and the gain stay flat is copying.
    keys = (
        names.STABILITY_PW_MCC,
        names.INDEPENDENT_PW_MCC,
        names.CONSISTENCY_INDEPENDENT_GAIN,
        names.RECON_EV,
    )
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), sharex=True)
    for ax, key in zip(axes, keys, strict=True):
        for (k, ds), g in d.groupby([names.PARAM_K, names.PARAM_D_SAE]):
            ax.plot(g[names.PARAM_LAMBDA], g[key], "o-", label=f"k {k}, d_sae {ds}")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlabel("consistency lambda (0 = off)")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    fig.suptitle("Effect of the consistency lambda (the gain is absent at lambda 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _params_shown(df: pd.DataFrame) -> list[str]:
    """PARAMS, less a layer or token budget no trial has (a task sweep's)."""
    optional = (LAYER, names.PARAM_LM_TOKEN_BUDGET)
    return [p for p in PARAMS if p not in optional or df[p].notna().any()]


def markdown_table(df: pd.DataFrame) -> str:
    cols = ["status", *_params_shown(df), *TABLE_METRICS]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append(
                "absent"
                if isinstance(v, float) and math.isnan(v)
                else f"{v:.4g}"
                if isinstance(v, float)
                else str(v)
            )
        body.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(body) + "\n"


def html_page(title: str, images: dict[str, Path], df: pd.DataFrame) -> str:
    """One file: plots embedded as data URIs (alt = their artifact names), then the table."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
    ]
    parts.append(
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 6px;"
        "font-size:12px}table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}"
        # The trial table is wider than a screen; it scrolls on its own so the plots stay put.
        "img{max-width:100%}.table{overflow-x:auto}"
        "</style></head><body>"
    )
    parts.append(f"<h1>{html.escape(title)}</h1>")
    for name, path in images.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(
            f"<h2>{html.escape(name)}</h2><img alt='{name}' src='data:image/png;base64,{data}'>"
        )
    cols = ["run_id", "status", *_params_shown(df), *TABLE_METRICS]
    parts.append("<h2>trials.csv</h2>")
    table = df[cols].to_html(index=False, na_rep="absent", float_format=lambda v: f"{v:.4g}")
    parts.append(f"<div class='table'>{table}</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def log_sweep_report(tracker: Tracker, sweep_run_id: str) -> SweepReport:
    """Build every file in a temporary folder and log it to the sweep run under `report/`."""
    df = trials_table(tracker.child_runs(sweep_run_id))
    run = tracker.get_run(sweep_run_id)
    best = run.tags.get(names.TAG_BEST_TRIAL_RUN_ID)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report"
        out.mkdir()
        images: dict[str, Path] = {}
        if len(_finished(df)):
            fin = _finished(df)
            for param in (a for a in AXES if a in ALWAYS_DRAWN or fin[a].nunique() >= 2):
                images[f"stability_vs_{param}.png"] = plot_stability_vs(
                    df, param, out / f"stability_vs_{param}.png"
                )
            images["pareto.png"] = plot_pareto(df, out / "pareto.png")
            if (df[names.PARAM_LAMBDA] > 0).any():
                images["lambda_effect.png"] = plot_lambda_effect(df, out / "lambda_effect.png")
        if best is not None:
            got = tracker.download(
                best, f"{names.ARTIFACT_PLOTS}/{names.PLOT_STABILITY_HEATMAP}", Path(tmp) / "dl"
            )
            images["best_trial_heatmap.png"] = Path(got).replace(out / "best_trial_heatmap.png")
        df.to_csv(out / "trials.csv", index=False)
        (out / "trials.md").write_text(markdown_table(df))
        title = f"Sweep {run.name} ({sweep_run_id})"
        (out / "report.html").write_text(html_page(title, images, df))
        tracker.log_artifacts(sweep_run_id, out, names.ARTIFACT_REPORT)
        files = sorted(p.name for p in out.iterdir())
    return SweepReport(files=files, n_trials=len(df), n_finished=len(_finished(df)))
