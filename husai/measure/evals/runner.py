"""Run the evals a trial's config switches on, on every seed's SAE, and time each.

An eval that is switched on but cannot run on these activations (a user's own file has no
pairs to label and no model to extract MLP activations from) is recorded as skipped with the
reason; its metrics stay absent, never zero.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from husai.config.experiment import ExperimentConfig
from husai.core.paths import cache_root
from husai.measure.evals.contrastive import contrast_pairs, contrastive_eval
from husai.measure.evals.feature_nulls import Features, feature_nulls, latents
from husai.measure.evals.ood import ood_recon
from husai.measure.evals.probing import (
    ProbeResult,
    TaskProbe,
    probe_task,
    raw_probe_auc,
    usable,
)
from husai.measure.evals.results import ContrastiveScores, EvalResults
from husai.measure.evals.tasks import key_frequencies, task_labels
from husai.measure.evals.transcoder import (
    TranscoderStress,
    cached_transcoder_stress,
    stress_key,
    transcoder_stress,
)
from husai.model.activations import ActivationSet, extract_rows, mlp_hooks
from husai.model.base_model import HookedTransformer
from husai.model.rows import as_tensor


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
            res.ood = {seed: ood_recon(sae, acts.eval, acts.ood, seed) for seed, sae in saes}
            res.seconds["ood"] = time.perf_counter() - start
    for name, on in (("probing", ev.probing), ("contrastive", ev.contrastive)):
        if on and not labelled:
            res.skipped[name] = "needs (a, b) pairs behind the rows: activations from a base model"
    if labelled and (ev.probing or ev.contrastive):
        with tempfile.TemporaryDirectory() as work:
            # Labelled rows come from the task's base model: small, always in memory.
            train = as_tensor(acts.train)
            nulls = {seed: feature_nulls(cfg, train, seed, Path(work)) for seed, _ in saes}
            _labelled_evals(cfg, acts, saes, nulls, res)
    return res


def _labelled_evals(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    saes: Sequence[tuple[int, Any]],
    nulls: Mapping[int, Mapping[str, Features]],
    res: EvalResults,
) -> None:
    """Probing and contrastive, each seed's SAE against the stronger of its feature nulls."""
    if cfg.evals.probing:
        start = time.perf_counter()
        try:
            res.probe_frequencies, res.probing = _probe(cfg, acts, saes, nulls)
            res.seconds["probing"] = time.perf_counter() - start
        except ValueError as e:  # too few rows for any task: data, not a bug
            res.skipped["probing"] = str(e)
    if cfg.evals.contrastive:
        start = time.perf_counter()
        try:
            res.contrastive = _contrastive(acts, saes, nulls)
            res.seconds["contrastive"] = time.perf_counter() - start
        except ValueError as e:
            res.skipped["contrastive"] = str(e)


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


def _probe(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    saes: Sequence[tuple[int, Any]],
    nulls: Mapping[int, Mapping[str, Features]],
) -> tuple[list[int], dict[int, ProbeResult]]:
    """(the Fourier tasks' frequencies, each seed's probes). Labels, frequencies and the raw
    baseline depend on the rows only: computed once for every seed."""
    p = int(acts.p or 0)
    train = as_tensor(acts.train)
    x_tr, x_te = train.double().numpy(), acts.eval.double().numpy()
    freqs = key_frequencies(x_tr, acts.train_rows.numpy(), p)
    y_tr = task_labels(acts.train_rows.numpy(), p, freqs)
    y_te = task_labels(acts.eval_rows.numpy(), p, freqs)
    y_ood = None
    if acts.ood is not None and acts.ood_rows is not None:
        y_ood = task_labels(acts.ood_rows.numpy(), p, freqs)
    # A task needs both classes among the probe-train and the held-out rows (tiny p can
    # leave one out); the others still count.
    tasks = [t for t in y_tr if usable(y_tr[t], y_te[t])]
    if not tasks:
        raise ValueError("no probing task has both classes in the train and held-out rows")
    raw = {t: raw_probe_auc(x_tr, x_te, y_tr[t], y_te[t]) for t in tasks}
    ks = cfg.evals.probe_ks

    def probes(f: Features, chosen: Sequence[TaskProbe] | None = None) -> list[TaskProbe]:
        """The SAE (`chosen` None: k by CV, also scored on the shifted slice) or a null (with
        the SAE's k per task)."""
        z_tr, z_te = f(train), f(acts.eval)
        z_ood = None if acts.ood is None or chosen is not None else f(acts.ood)
        return [
            probe_task(
                t,
                z_tr,
                z_te,
                y_tr[t],
                y_te[t],
                ks,
                z_ood,
                None if y_ood is None or z_ood is None else y_ood[t],
                fixed_k=None if chosen is None else chosen[i].best_k,
            )
            for i, t in enumerate(tasks)
        ]

    out = {}
    for seed, sae in saes:
        mine = probes(partial(latents, sae))
        theirs = {name: probes(f, mine) for name, f in nulls[seed].items()}
        strongest = max(theirs, key=lambda n: (float(np.mean([t.auc for t in theirs[n]])), n))
        out[seed] = ProbeResult(mine, theirs[strongest], raw, strongest)
    return freqs, out


def _contrastive(
    acts: ActivationSet,
    saes: Sequence[tuple[int, Any]],
    nulls: Mapping[int, Mapping[str, Features]],
) -> dict[int, ContrastiveScores]:
    """Held-out rows only: the SAE never trained on them."""
    pairs = contrast_pairs(acts.eval_rows.numpy(), int(acts.p or 0))
    out = {}
    for seed, sae in saes:
        theirs = {name: contrastive_eval(f(acts.eval), pairs) for name, f in nulls[seed].items()}
        strongest = max(theirs, key=lambda n: (theirs[n].score, n))
        mine = contrastive_eval(latents(sae, acts.eval), pairs)
        out[seed] = ContrastiveScores(mine, theirs[strongest], strongest)
    return out
