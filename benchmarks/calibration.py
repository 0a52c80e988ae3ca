"""Calibration of the release gate's stability check: its false-promotion rate (size) and its
power, measured on synthetic activations whose truth is known (docs/metrics.md, "Stability").

Every set runs through what `husai trial --activations-file` computes (`run_trial`: 5 seeds,
the isotropic, covariance and surrogate nulls, evals off; a user's file has no random base
model) and the default policy's stability check is judged by the gate's own `evaluate` on the
trial's metrics (lambda 0: `stability/independent_pw_mcc_excess_surrogate_lcb >= 0`). Nothing is
recorded in MLflow: the numbers, not the records, are what is measured.

- featureless (a covariance and nothing else): Gaussians in d 128 with participation ratio
  about 5, 11 (the quick preset's own spectrum, measured from its activations) and 30; a
  multivariate t with 3 degrees of freedom and the quick spectrum's covariance; a finite set of
  3,481 Gaussian points with the quick spectrum (the quick preset's row count). Recipes at
  d_sae 2x, 8x and 32x the participation ratio. No setting has anything to find: every
  promotion is a false one.
- with features: k-sparse (3) non-negative codes over 32 unit atoms on a rank-8 Gaussian
  background (d 128), the features carrying 0-50% of the variance; recipes at d_sae 16, 64
  and 256 (2x, 8x, 32x the background's rank; 16 cannot cover the 32 atoms).

It prints the false-promotion rate with a Clopper-Pearson 95% interval (overall and per
setting), the mean excess over the surrogate (calibrated: near 0) and over the covariance null
(its bias), and the power curve by recipe; writes every trial's numbers as JSON and the curves
as a PNG next to it.

    .venv/bin/python benchmarks/calibration.py [--draws 10] [--out /tmp/calibration]
    .venv/bin/python benchmarks/calibration.py --reduced --out DIR   # one set of each kind
    .venv/bin/python benchmarks/calibration.py --report RUN.json --out DIR   # redraw a run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
D = 128
SEEDS = [0, 1, 2, 3, 4]
MULTIPLES = (2, 8, 32)
TRAIN = {"steps": 400, "batch_size": 256, "lr": 3e-3, "lr_warmup_steps": 20, "lr_decay_steps": 80}
N_ROWS = 20_000  # a "continuous" set: far more rows than an SAE can pack
N_FINITE = 3_481  # the quick preset's pairs (p = 59)
BACKGROUND_RANK, N_FEATURES, FEATURE_K = 8, 32, 3
SHARES = (0.0, 0.02, 0.05, 0.2, 0.5)
FEATURE_RECIPES = (16, 64, 256)  # 2x, 8x, 32x the background rank; k 4


@dataclass(frozen=True)
class Outcome:
    """One trial on one synthetic set."""

    kind: str  # featureless / features
    setting: str
    draw: int  # the data seed
    pr: float  # participation ratio of the set's covariance
    share: float  # the features' share of the variance (0 for featureless)
    d_sae: int
    k: int
    multiple: float  # d_sae / the effective rank it was sized by
    pw_mcc: float
    surrogate: float  # the surrogate null's pw_mcc
    covariance: float
    excess: float  # over the surrogate
    excess_lcb: float | None
    excess_ucb: float | None
    excess_covariance: float
    excess_covariance_lcb: float | None
    promoted: bool  # the default policy's stability check passed
    # What metric_version 5 decided: the excess over the strongest untrained null (the higher
    # of isotropic and covariance by point estimate), its lower bound >= 0.
    promoted_before: bool
    seconds: float


def trial(rows: Any, d_sae: int, k: int, workdir: Path) -> tuple[dict[str, float | None], float]:
    """The trial `husai trial` runs on these rows (written as a user's file), its metrics."""
    import torch

    from husai.config.loading import from_dict
    from husai.measure.trial import run_trial
    from husai.model.activations import load_user_activations

    path = workdir / "rows.npy"
    np.save(path, rows.numpy() if isinstance(rows, torch.Tensor) else rows)
    cfg = from_dict(
        {
            "name": "calibration",
            "sae": {"architecture": "topk", "d_sae": d_sae, "k": k},
            "train": {**TRAIN, "log_every": 1000},
            "trial": {"seeds": SEEDS, "nulls": ["isotropic", "covariance", "surrogate"]},
            "evals": {"transcoder": False, "ood": False, "probing": False, "contrastive": False},
        },
        "calibration",
    )
    acts = load_user_activations(path, cfg.activations)
    start = time.perf_counter()
    result = run_trial(cfg, acts, workdir / "saes", progress=False)
    return result.trial_metrics(), time.perf_counter() - start


def promoted(metrics: dict[str, float | None]) -> bool:
    """The default policy's stability group, judged by the gate on these numbers."""
    from husai.registry.gate import Reading, evaluate, load_policy

    policy = load_policy(ROOT / "gates" / "default.yaml")
    readings = {k: Reading(v, "calibration") for k, v in metrics.items() if v is not None}
    d = evaluate(policy, "calibration", readings, None, n_seeds=len(SEEDS), lam=0.0)
    checks = [c for c in d.checks if c.check.startswith("stability.")]
    return bool(checks) and all(c.passed for c in checks)


def outcome(
    kind: str, setting: str, draw: int, rows: Any, share: float, d_sae: int, k: int, mult: float
) -> Outcome:
    from husai import names
    from husai.model.synthetic import participation_ratio

    x = rows.double().numpy()
    pr = participation_ratio(np.linalg.eigvalsh(np.cov(x.T)))
    with tempfile.TemporaryDirectory() as tmp:
        m, seconds = trial(rows, d_sae, k, Path(tmp))
    pw = names.STABILITY_PW_MCC

    def key(suffix: str) -> float | None:
        v = m.get(names.stability_key(pw, suffix))
        return None if v is None else float(v)

    def need(suffix: str) -> float:
        v = key(suffix)
        assert v is not None, suffix
        return v

    return Outcome(
        kind=kind,
        setting=setting,
        draw=draw,
        pr=pr,
        share=share,
        d_sae=d_sae,
        k=k,
        multiple=mult,
        pw_mcc=need(""),
        surrogate=need(names.null_suffix("surrogate")),
        covariance=need(names.null_suffix("covariance")),
        excess=need(names.excess_suffix("surrogate")),
        excess_lcb=key(names.excess_suffix("surrogate", "_lcb")),
        excess_ucb=key(names.excess_suffix("surrogate", "_ucb")),
        excess_covariance=need(names.excess_suffix("covariance")),
        excess_covariance_lcb=key(names.excess_suffix("covariance", "_lcb")),
        promoted=promoted(m),
        promoted_before=_before(key),
        seconds=seconds,
    )


def _before(key: Callable[[str], float | None]) -> bool:
    from husai import names

    strongest = max(("isotropic", "covariance"), key=lambda n: key(names.null_suffix(n)) or 0.0)
    lcb = key(names.excess_suffix(strongest, "_lcb"))
    return lcb is not None and lcb >= 0.0


def quick_spectrum(store: Path) -> np.ndarray:
    """Eigenvalues of the quick preset's SAE-train rows (its base model trained, or reused from
    `store`), normalised to sum to d."""
    os.environ.setdefault("HUSAI_CACHE_DIR", str(store / "cache"))
    from husai.config.loading import from_dict, preset_dict
    from husai.model.rows import as_tensor
    from husai.registry.tracking import Tracker
    from husai.run import stages

    cfg = from_dict({**preset_dict("quick"), "name": "calibration"}, "quick preset")
    tracker = Tracker("sqlite:///" + str(store / "mlflow.db"))
    base = stages.base_model(cfg, tracker, progress=False)
    acts = stages.activations(cfg, base, tracker)
    x = as_tensor(acts.acts.train).double().numpy()
    lam = np.clip(np.linalg.eigvalsh(np.cov(x.T))[::-1], 0, None)
    return lam * len(lam) / lam.sum()


def featureless_sets(
    quick: np.ndarray,
) -> list[tuple[str, np.ndarray, Callable[[int, np.ndarray, int], Any], int]]:
    from husai.model.synthetic import elliptical_t, gaussian, power_law_spectrum

    return [
        ("gaussian_pr5", power_law_spectrum(D, 5.0), gaussian, N_ROWS),
        ("gaussian_quick", quick, gaussian, N_ROWS),
        ("gaussian_pr30", power_law_spectrum(D, 30.0), gaussian, N_ROWS),
        ("t3_quick", quick, elliptical_t, N_ROWS),
        ("finite3481_quick", quick, gaussian, N_FINITE),
    ]


def run_featureless(quick: np.ndarray, draws: int, log: Callable[[Outcome], None]) -> None:
    from husai.model.synthetic import participation_ratio

    for name, spectrum, make, n in featureless_sets(quick):
        pr = participation_ratio(spectrum)
        for draw in range(draws):
            rows = make(n, spectrum, 1000 * draw + 17)
            for mult in MULTIPLES:
                d_sae = max(4, round(mult * pr))
                k = max(2, round(pr / 2))
                log(outcome("featureless", name, draw, rows, 0.0, d_sae, k, mult))


def run_features(
    draws: int, log: Callable[[Outcome], None], shares: tuple[float, ...] = SHARES
) -> None:
    from husai.model.synthetic import sparse_features

    for share in shares:
        for draw in range(draws):
            fs = sparse_features(
                N_ROWS, D, BACKGROUND_RANK, N_FEATURES, FEATURE_K, share, 2000 * draw + 29
            )
            for d_sae in FEATURE_RECIPES:
                mult = d_sae / BACKGROUND_RANK
                log(outcome("features", f"share{share:g}", draw, fs.rows, share, d_sae, 4, mult))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy import stats

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def report(rows: list[Outcome], out: Path) -> str:
    lines = []
    fl = [r for r in rows if r.kind == "featureless"]
    if fl:
        k, n = sum(r.promoted for r in fl), len(fl)
        lo, hi = clopper_pearson(k, n)
        kb = sum(r.promoted_before for r in fl)
        lo_b, hi_b = clopper_pearson(kb, n)
        lines += [
            f"False promotions on featureless sets: {k}/{n} = {k / n:.1%} "
            f"(Clopper-Pearson 95% [{lo:.1%}, {hi:.1%}]); against the strongest untrained null "
            f"(metric_version 5): {kb}/{n} = {kb / n:.1%} [{lo_b:.1%}, {hi_b:.1%}]",
            "",
            "| setting | PR | d_sae (x PR) | k | trials | promoted | excess over surrogate, "
            "mean (sd) | excess over covariance, mean | promoted by v5's rule |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key in sorted({(r.setting, r.multiple) for r in fl}, key=lambda t: (t[0], t[1])):
            g = [r for r in fl if (r.setting, r.multiple) == key]
            ex = np.array([r.excess for r in g])
            cov = np.array([r.excess_covariance for r in g])
            lines.append(
                f"| {key[0]} | {np.mean([r.pr for r in g]):.1f} | {g[0].d_sae} ({key[1]:g}x) | "
                f"{g[0].k} | {len(g)} | {sum(r.promoted for r in g)} | "
                f"{ex.mean():+.4f} ({ex.std(ddof=1) if len(ex) > 1 else 0:.4f}) | "
                f"{cov.mean():+.4f} | {sum(r.promoted_before for r in g)} |"
            )
        lines.append("")
    ft = [r for r in rows if r.kind == "features"]
    if ft:
        shares = sorted({r.share for r in ft})
        d_saes = sorted({r.d_sae for r in ft})
        lines += [
            "Power: promoted / trials, by the features' share of the variance "
            f"({N_FEATURES} atoms, k {FEATURE_K}, rank-{BACKGROUND_RANK} background; "
            "mean excess over the surrogate in brackets)",
            "",
            "| d_sae | " + " | ".join(f"share {s:.0%}" for s in shares) + " |",
            "|---" * (len(shares) + 1) + "|",
        ]
        for d_sae in d_saes:
            cells = []
            for s in shares:
                g = [r for r in ft if r.d_sae == d_sae and r.share == s]
                if g:
                    ex = np.mean([r.excess for r in g])
                    before = sum(r.promoted_before for r in g)
                    cells.append(f"{sum(r.promoted for r in g)}/{len(g)} ({ex:+.3f}; v5 {before})")
                else:
                    cells.append("-")
            cover = "covers" if d_sae >= N_FEATURES else "cannot cover"
            head = f"| {d_sae} ({cover} the {N_FEATURES} atoms) | "
            lines.append(head + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"trial seconds: {sum(r.seconds for r in rows):.0f} over {len(rows)} trials")
    text = "\n".join(lines)
    (out / "calibration.md").write_text(text + "\n")
    (out / "calibration.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    plot(rows, out / "calibration.png")
    return text


def plot(rows: list[Outcome], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    fl = [r for r in rows if r.kind == "featureless"]
    settings = sorted({r.setting for r in fl})
    styles = zip(MULTIPLES, "os^", ("tab:blue", "tab:orange", "tab:green"), strict=True)
    for j, (mult, marker, colour) in enumerate(styles):
        for i, s in enumerate(settings):
            g = [r for r in fl if r.setting == s and r.multiple == mult]
            a.scatter(
                [i + (j - 1) * 0.2] * len(g),
                [r.excess for r in g],
                marker=marker,
                color=colour,
                s=14,
                label=f"d_sae {mult}x PR" if i == 0 else None,
            )
    a.axhline(0, color="k", linewidth=0.8)
    a.set_xticks(range(len(settings)), settings, rotation=20, fontsize=7)
    a.set_ylabel("pw_mcc excess over the surrogate")
    a.set_title("featureless sets: the calibrated excess", fontsize=9)
    a.legend(fontsize=7)
    ft = [r for r in rows if r.kind == "features"]
    for d_sae in sorted({r.d_sae for r in ft}):
        shares = sorted({r.share for r in ft if r.d_sae == d_sae})
        rate = [
            np.mean([r.promoted for r in ft if r.d_sae == d_sae and r.share == s]) for s in shares
        ]
        b.plot(shares, rate, "o-", label=f"d_sae {d_sae}")
    b.axhline(0.8, color="0.6", linestyle="--", linewidth=0.8)
    b.axhline(0.05, color="0.6", linestyle=":", linewidth=0.8)
    b.set_xlabel("features' share of the variance")
    b.set_ylabel("promoted (default stability check)")
    b.set_title("power", fontsize=9)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=10, help="data seeds per featureless setting")
    ap.add_argument("--feature-draws", type=int, default=5, help="data seeds per feature share")
    ap.add_argument("--out", type=Path, default=Path("/tmp/calibration"))
    ap.add_argument("--store", type=Path, help="store of the quick preset (default: under --out)")
    ap.add_argument("--reduced", action="store_true", help="one featureless and one feature set")
    ap.add_argument(
        "--report", type=Path, help="print the tables and draw the plot of a saved run's JSON"
    )
    args = ap.parse_args()
    if args.report is not None:
        saved = [Outcome(**r) for r in json.loads(args.report.read_text())]
        args.out.mkdir(parents=True, exist_ok=True)
        print(report(saved, args.out))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HUSAI_CACHE_DIR", str(args.out / "cache"))
    from tqdm.auto import tqdm

    rows: list[Outcome] = []
    bar = tqdm(desc="calibration trials", unit="trial")

    def log(o: Outcome) -> None:
        rows.append(o)
        bar.update()
        bar.set_postfix(last=f"{o.setting} {o.d_sae}: {o.excess:+.3f}")
        (args.out / "calibration.json").write_text(json.dumps([asdict(r) for r in rows]))

    start = time.perf_counter()
    if args.reduced:
        from husai.model.synthetic import gaussian, power_law_spectrum, sparse_features

        spectrum = power_law_spectrum(D, 11.0)
        data = gaussian(N_ROWS, spectrum, 17)
        log(outcome("featureless", "gaussian_pr11", 0, data, 0.0, 88, 6, 8))
        fs = sparse_features(N_ROWS, D, BACKGROUND_RANK, N_FEATURES, FEATURE_K, 0.5, 29)
        log(outcome("features", "share0.5", 0, fs.rows, 0.5, 64, 4, 8))
    else:
        quick = quick_spectrum(args.store or args.out / "store")
        run_featureless(quick, args.draws, log)
        run_features(args.feature_draws, log)
    bar.close()
    print(report(rows, args.out))
    print(f"wall {time.perf_counter() - start:.0f} s; {args.out}/calibration.{{md,json,png}}")


if __name__ == "__main__":
    main()
