"""Run the evals a trial's config switches on, on every seed's SAE, and time each.

An eval that is switched on but cannot run on these activations (a user's own file has no
pairs to label and no model to extract MLP activations from) is recorded as skipped with the
reason; its metrics stay absent, never zero.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from husai import names
from husai.config.experiment import ExperimentConfig
from husai.core.paths import cache_root
from husai.measure.evals.contrastive import ContrastiveResult, contrastive_eval
from husai.measure.evals.ood import OODResult, ood_recon
from husai.measure.evals.probing import ProbeResult, probe_task
from husai.measure.evals.tasks import task_labels
from husai.measure.evals.transcoder import (
    TranscoderStress,
    cached_transcoder_stress,
    stress_key,
    transcoder_stress,
)
from husai.measure.metrics import reconstruct
from husai.measure.stability import seed_mean_interval
from husai.model.activations import ActivationSet, extract_rows, mlp_hooks
from husai.model.base_model import HookedTransformer


@dataclass
class EvalResults:
    transcoder: TranscoderStress | None = None
    ood: dict[int, OODResult] = field(default_factory=dict)
    probing: dict[int, ProbeResult] = field(default_factory=dict)
    contrastive: dict[int, ContrastiveResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # eval -> why it could not run

    def tags(self) -> dict[str, str]:
        """Why an eval was skipped; that the transcoder stress came from the cache."""
        out = {names.eval_skipped_tag(k): why for k, why in self.skipped.items()}
        if self.transcoder is not None and self.transcoder.cached:
            out[names.TAG_TRANSCODER_CACHED] = "true"
        return out

    def seed_metrics(self, seed: int) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        if seed in self.ood:
            out[names.STRESS_OOD_DROP] = self.ood[seed].drop
            out[names.STRESS_OOD_EV] = self.ood[seed].ev_out
        if seed in self.probing:
            pr = self.probing[seed]
            out[names.EXTERNAL_PROBE_DELTA] = pr.delta
            out[names.EXTERNAL_PROBE_AUC] = pr.sae_auc
            out[names.STRESS_OOD_PROBE_DROP] = pr.ood_drop
        if seed in self.contrastive:
            out[names.EXTERNAL_CONTRASTIVE_SCORE] = self.contrastive[seed].score
        return out

    def trial_metrics(self, plain_contrastive: dict[int, float] | None) -> dict[str, float | None]:
        """Trial-level keys: means over seeds, lower bounds of their t-intervals.
        `plain_contrastive` = the lambda = 0 recipe's score per seed (None: this trial is that
        recipe)."""
        out: dict[str, float | None] = {}
        if self.transcoder is not None:
            t = self.transcoder
            out.update(
                {
                    names.STRESS_TRANSCODER_DELTA: t.delta,
                    names.STRESS_TRANSCODER_DELTA_LCB: t.delta_lcb,
                    names.STRESS_TRANSCODER_DELTA_UCB: t.delta_ucb,
                    names.STRESS_TRANSCODER_PW_MCC: t.transcoder_pw_mcc,
                    names.STRESS_MLP_IN_SAE_PW_MCC: t.sae_pw_mcc,
                }
            )
        if self.ood:
            out[names.STRESS_OOD_DROP] = _mean(r.drop for r in self.ood.values())
            out[names.STRESS_OOD_EV] = _mean(r.ev_out for r in self.ood.values())
        if self.probing:
            deltas = [r.delta for r in self.probing.values()]
            out[names.EXTERNAL_PROBE_DELTA] = _mean(deltas)
            out[names.EXTERNAL_PROBE_DELTA_LCB] = seed_mean_interval(deltas).lcb
            out[names.EXTERNAL_PROBE_AUC] = _mean(r.sae_auc for r in self.probing.values())
            out[names.EXTERNAL_PROBE_BASELINE_AUC] = _mean(
                r.baseline_auc for r in self.probing.values()
            )
            drops = [r.ood_drop for r in self.probing.values()]
            # The same tasks qualify for every seed (labels do not depend on the SAE).
            out[names.STRESS_OOD_PROBE_DROP] = (
                None if any(d is None for d in drops) else _mean(d for d in drops if d is not None)
            )
        if self.contrastive:
            scores = {s: r.score for s, r in self.contrastive.items()}
            out[names.EXTERNAL_CONTRASTIVE_SCORE] = _mean(scores.values())
            base = scores if plain_contrastive is None else plain_contrastive
            if all(s in base for s in scores):
                diffs = [scores[s] - base[s] for s in scores]
                out[names.EXTERNAL_CONTRASTIVE_DELTA] = _mean(diffs)
                out[names.EXTERNAL_CONTRASTIVE_DELTA_LCB] = seed_mean_interval(diffs).lcb
        for name, secs in self.seconds.items():
            out[names.eval_seconds_key(name)] = secs
        return out


def _mean(values: Any) -> float:
    return float(np.mean(list(values)))


def run_evals(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    saes: Sequence[tuple[int, Any]],
    base_model: HookedTransformer | None,
    progress: bool = False,
) -> EvalResults:
    """`saes`: (seed, inference SAE as saved and reloaded) for every seed of the trial."""
    ev, res = cfg.evals, EvalResults()
    labelled = acts.p is not None
    if ev.transcoder:
        if base_model is None or acts.hook is None or acts.position is None:
            res.skipped["transcoder"] = "needs the base model the activations came from"
        else:
            start = time.perf_counter()
            try:
                res.transcoder = _transcoder(cfg, acts, base_model, progress)
                res.seconds["transcoder"] = time.perf_counter() - start
            except ValueError as e:  # e.g. hook_embed: no MLP around the hook
                res.skipped["transcoder"] = str(e)
    if ev.ood:
        if acts.ood is None:
            res.skipped["ood"] = "no shifted slice in these activations (activations.ood_frac)"
        else:
            start = time.perf_counter()
            res.ood = {seed: ood_recon(sae, acts.eval, acts.ood) for seed, sae in saes}
            res.seconds["ood"] = time.perf_counter() - start
    for name, on in (("probing", ev.probing), ("contrastive", ev.contrastive)):
        if on and not labelled:
            res.skipped[name] = "needs (a, b) pairs behind the rows: activations from a base model"
    if ev.probing and labelled:
        start = time.perf_counter()
        try:
            res.probing = {seed: _probe(cfg, acts, sae) for seed, sae in saes}
            res.seconds["probing"] = time.perf_counter() - start
        except ValueError as e:  # too few rows for any task: data, not a bug
            res.skipped["probing"] = str(e)
    if ev.contrastive and labelled:
        start = time.perf_counter()
        try:
            res.contrastive = {seed: _contrastive(acts, sae) for seed, sae in saes}
            res.seconds["contrastive"] = time.perf_counter() - start
        except ValueError as e:
            res.skipped["contrastive"] = str(e)
    return res


def _transcoder(
    cfg: ExperimentConfig, acts: ActivationSet, model: HookedTransformer, progress: bool
) -> TranscoderStress:
    hooks = mlp_hooks(model, str(acts.hook))
    p, position, idx = int(acts.p or 0), int(acts.position or 0), acts.train_rows

    def compute() -> TranscoderStress:
        rows = extract_rows(model, p, list(hooks), position)
        return transcoder_stress(cfg, rows[hooks[0]][idx], rows[hooks[1]][idx], hooks, progress)

    key = stress_key(cfg, acts.key, hooks)
    return cached_transcoder_stress(cache_root() / "evals" / "transcoder" / f"{key}.json", compute)


def _latents(sae: Any, x: Any) -> np.ndarray:
    return reconstruct(sae, x)[0].double().numpy()


def _probe(cfg: ExperimentConfig, acts: ActivationSet, sae: Any) -> ProbeResult:
    p = int(acts.p or 0)
    y_tr, y_te = task_labels(acts.train_rows.numpy(), p), task_labels(acts.eval_rows.numpy(), p)
    z_tr, z_te = _latents(sae, acts.train), _latents(sae, acts.eval)
    x_tr, x_te = acts.train.double().numpy(), acts.eval.double().numpy()
    z_ood = y_ood = None
    if acts.ood is not None and acts.ood_rows is not None:
        z_ood, y_ood = _latents(sae, acts.ood), task_labels(acts.ood_rows.numpy(), p)
    # A task needs both classes among the probe-train and the held-out rows (tiny p can
    # leave one out); the others still count.
    tasks = [t for t in y_tr if len(set(y_tr[t])) == 2 and len(set(y_te[t])) == 2]
    if not tasks:
        raise ValueError("no probing task has both classes in the train and held-out rows")
    return ProbeResult(
        [
            probe_task(
                task,
                z_tr,
                z_te,
                x_tr,
                x_te,
                y_tr[task],
                y_te[task],
                cfg.evals.probe_ks,
                z_ood,
                None if y_ood is None else y_ood[task],
            )
            for task in tasks
        ]
    )


def _contrastive(acts: ActivationSet, sae: Any) -> ContrastiveResult:
    p = int(acts.p or 0)
    rows = np.concatenate([acts.train_rows.numpy(), acts.eval_rows.numpy()])
    z = np.concatenate([_latents(sae, acts.train), _latents(sae, acts.eval)])
    z_by_row = np.zeros((p * p, z.shape[1]))
    present = np.zeros(p * p, dtype=bool)
    z_by_row[rows], present[rows] = z, True
    return contrastive_eval(z_by_row, present, p)
