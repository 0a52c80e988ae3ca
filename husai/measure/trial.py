"""One trial: an SAE recipe trained with N seeds on the same activations, measured on held-out
rows, its cross-seed stability measured against nulls that learned nothing, every eval run on
every seed. Returns a TrialResult, which also names its numbers by their MLflow keys
(`trial_metrics`, `seed_metrics`); `husai.run.trial_stages` records it.

    python -m husai trial --preset quick
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from husai import names
from husai.config.experiment import ExperimentConfig
from husai.core import memory
from husai.core.errors import InputError
from husai.measure.consistency_metrics import ConsistencyMetrics, consistency_metrics
from husai.measure.evals.results import EvalResults
from husai.measure.evals.runner import run_evals
from husai.measure.metrics import (
    ReconMetrics,
    Recovered,
    held_out,
    loss_recovered,
    recon_metrics,
)
from husai.measure.nulls import Nulls, null_decoders, untrained_sae
from husai.measure.stability import (
    StabilityReport,
    independent_stability,
    representative,
    stability_metrics,
    stability_report,
)
from husai.measure.stack import Trained, machine_bytes, training_bytes, trial_stack
from husai.model.activations import ActivationSet, readout_ce
from husai.model.base_model import HookedTransformer
from husai.model.rows import row_mean
from husai.sae.build import SAE, decoder, load_sae, save_sae
from husai.sae.consistency import ConsistencyPenalty, loss_scale
from husai.sae.types import TrainedSAE

RECON_FIELDS = tuple(names.RECON_KEYS)


@dataclass
class SeedResult:
    seed: int
    trained: TrainedSAE
    sae: SAE[Any]  # the inference SAE as saved and reloaded: what users get
    folder: Path  # sae-lens folder (safetensors + cfg.json)
    recon: ReconMetrics
    alive: torch.Tensor  # [d_sae] bool: the latent fires on some held-out row

    def curves(self) -> dict[str, list[tuple[int, float]]]:
        """Training curves by MLflow key (train/<name>), as (step, value) points."""
        c = self.trained.curves
        return {names.train_key(k): list(zip(c.steps, v, strict=True)) for k, v in c.values.items()}


@dataclass(frozen=True)
class Pull:
    """What a lambda > 0 trial needs: the frozen reference its seeds are pulled toward, and the
    controls its independence is scored against (the lambda = 0 recipe's seeds)."""

    reference: torch.Tensor  # [d_sae, d_in]
    controls: list[tuple[int, torch.Tensor]]  # (seed, decoder) of the lambda = 0 recipe


@dataclass
class TrialResult:
    seeds: list[SeedResult]
    stability: StabilityReport  # among the trial's own seeds; references are never compared
    nulls: Nulls  # what the stability is measured against
    representative_seed: int
    representative_reason: str
    recon_mean: dict[str, float | None]
    seconds: float
    consistency: ConsistencyMetrics | None = None  # lambda > 0 only
    consistency_scale: float | None = None  # s of lambda * s * penalty (lambda > 0 only)
    evals: EvalResults | None = None  # stress tests and local evals (cfg.evals)
    # lambda > 0: the lambda = 0 recipe's contrastive score per seed ({} if unknown);
    # None: this trial is its own baseline.
    plain_contrastive: dict[int, float] | None = None

    def seed_result(self, seed: int) -> SeedResult:
        return next(s for s in self.seeds if s.seed == seed)

    def seed_metrics(self, seed: int) -> dict[str, float | None]:
        """One seed's numbers by MLflow key: held-out recon, its evals, its training time."""
        sr = self.seed_result(seed)
        recon = {names.RECON_KEYS[k]: v for k, v in sr.recon.as_dict().items()}
        evals = self.evals.seed_metrics(seed) if self.evals is not None else {}
        return {**recon, **evals, names.SEED_SECONDS: sr.trained.seconds}

    def trial_metrics(self) -> dict[str, float | None]:
        """The trial's numbers by MLflow key: recon means, stability against its nulls, what
        the nulls cost, consistency (lambda > 0) and the evals' trial-level keys. None: not
        computed."""
        out: dict[str, float | None] = {names.RECON_KEYS[k]: v for k, v in self.recon_mean.items()}
        out[names.TRIAL_SECONDS] = self.seconds
        out[names.TRIAL_N_SEEDS] = len(self.seeds)
        out.update(self.nulls.metrics())
        if self.consistency is not None:
            out.update(self.consistency.keyed())
        out.update(self.independent_metrics())
        if self.evals is not None:
            out.update(self.evals.trial_metrics(self.plain_contrastive))
        return {**out, **stability_metrics(self.stability)}

    def independent_metrics(self) -> dict[str, float | None]:
        """pw_mcc between SAEs that never saw each other and its excess over each null
        (stability/independent_pw_mcc*): what copying the reference cannot inflate."""
        c = self.consistency
        if c is None:
            return independent_stability(self.stability, None).keyed()
        return independent_stability(self.stability, c.to_controls, c.reference_variance).keyed()

    def tags(self) -> dict[str, str]:
        """Why a null or an eval is absent."""
        out = dict(self.nulls.tags())
        if self.evals is not None:
            out.update(self.evals.tags(self.plain_contrastive))
        return out


def check_batch(cfg: ExperimentConfig, n_train_rows: int) -> None:
    if cfg.train.batch_size > n_train_rows:
        raise InputError(
            f"train.batch_size: {cfg.train.batch_size} exceeds the {n_train_rows} training rows"
        )


def preflight(cfg: ExperimentConfig, acts: ActivationSet) -> None:
    """Problems that would only surface mid-trial, raised before any compute or run."""
    check_sizes(cfg, int(acts.train.shape[0]), acts.d_in)


def check_sizes(cfg: ExperimentConfig, n_train_rows: int, d_in: int) -> None:
    """`preflight` where the rows are not extracted yet, only counted."""
    check_batch(cfg, n_train_rows)
    check_memory(cfg, d_in)


def check_memory(cfg: ExperimentConfig, d_in: int) -> None:
    """Refuse a shape that cannot fit in this machine's memory, before anything is trained."""
    need, have = training_bytes(cfg, d_in), machine_bytes()
    if have and need > have:
        raise InputError(
            f"sae.d_sae: {cfg.sae.d_sae} latents x d_in {d_in} x {len(cfg.trial.seeds)} seeds "
            f"need at least {need / 2**30:.1f} GiB to train; this machine has "
            f"{have / 2**30:.1f} GiB"
        )


class Splice(Protocol):
    """Measures loss recovered with an SAE's reconstruction of the held-out rows spliced in."""

    def recovered(self, x_hat: torch.Tensor) -> Recovered: ...


class _SpliceCE:
    """CE at the read-out with the hook position clean, mean-ablated or replaced by x_hat."""

    def __init__(self, model: HookedTransformer, acts: ActivationSet) -> None:
        if acts.p is None or acts.hook is None or acts.position is None:
            raise ValueError("loss_recovered needs activations extracted from a base model")
        p, hook, position, rows = acts.p, acts.hook, acts.position, acts.eval_rows
        self._ce = lambda patch: readout_ce(model, p, rows, hook, position, patch)
        self.clean = self._ce(None)
        mean = row_mean(acts.train)[None].expand_as(acts.eval)
        self.ablate = self._ce(mean)

    def recovered(self, x_hat: torch.Tensor) -> Recovered:
        return Recovered(loss_recovered(self.clean, self._ce(x_hat), self.ablate))


def run_trial(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    workdir: Path,
    base_model: HookedTransformer | None = None,
    progress: bool = True,
    pull: Pull | None = None,
    on_seed: Callable[[list[ReconMetrics]], None] | None = None,
    random_base: ActivationSet | None = None,
    random_base_missing: str = "needs activations extracted from a base model",
    splice: Splice | None = None,
    trained: Trained | None = None,
) -> TrialResult:
    """Train every seed, measure held-out reconstruction and cross-seed stability against the
    nulls `cfg.trial.nulls` names, run the evals.

    With lambda > 0, `pull`: each seed is pulled toward its reference; its controls (the
    lambda = 0 recipe's seeds, never pulled) tell how much of the resulting alignment is
    copying. `on_seed` sees the held-out metrics of
    the seeds finished so far, after each seed. `random_base`: the activations of the randomly
    initialised base model, for the random-base null (None: it is skipped, for the reason
    `random_base_missing` gives). `splice`: how `recon/loss_recovered` is measured, where the
    caller has its own (a language model's held-out contexts); else the base model's read-out.
    `trained`: the trial's SAEs already trained in a sweep's grid bundle
    (`husai.measure.stack.bundle_stack`); None: trained here (`trial_stack`).
    """
    preflight(cfg, acts)
    lam = cfg.consistency.lam
    if lam > 0 and pull is None:
        raise ValueError("consistency.lambda > 0 needs a reference and the lambda = 0 controls")
    start = time.perf_counter()
    if splice is None and base_model is not None:
        splice = _SpliceCE(base_model, acts)
    seeds = []
    pulls, scale = None, None
    if lam > 0 and pull is not None:
        # The penalty keeps per-seed state (its matching): one per seed.
        ref = pull.reference
        every = cfg.consistency.assign_every
        scale = loss_scale(acts.train)
        pulls = [(ConsistencyPenalty(ref, every), lam * scale) for _ in cfg.trial.seeds]
    # A bundle trained before this call: the trial is credited its members' share of it.
    before = 0.0 if trained is None else _stack_share(trained)
    if trained is None:
        trained = trial_stack(cfg, acts, random_base, pulls, progress)
    for seed_sae in trained.seeds:
        memory.give_back()  # training's freed buffers, before the held-out rows are encoded
        seed = seed_sae.seed
        folder = save_sae(seed_sae.sae, workdir / f"seed_{seed}")
        sae = load_sae(folder)
        h = held_out(sae, acts.eval)
        lr = splice.recovered(h.x_hat) if splice is not None else Recovered(None)
        recon = recon_metrics(sae, acts.eval, lr.mean, recon=h, loss_recovered_zero=lr.zero)
        seeds.append(SeedResult(seed, seed_sae, sae, folder, recon, h.alive))
        del h  # [eval rows, d_in]: not kept while the next seed is measured
        if on_seed is not None:  # e.g. a Ray Tune report, so ASHA can stop a poor trial early
            on_seed([s.recon for s in seeds])

    d_in, t = acts.d_in, cfg.trial
    random = [decoder(untrained_sae(cfg, d_in, s)) for s in t.seeds]
    nulls = null_decoders(cfg, acts, random_base, random_base_missing, progress, trained.nulls)
    report = stability_report(
        trained=[s.trained.decoder for s in seeds],
        random=random,
        step0=[s.trained.decoder_step0 for s in seeds],
        nulls=nulls.decoders,
        d_in=d_in,
        alive=[s.alive for s in seeds],
    )
    rep = seeds[representative(report.trained["pw_mcc"])].seed
    evals = run_evals(cfg, acts, [(s.seed, s.sae) for s in seeds], base_model, progress)
    consistency = None
    if lam > 0 and pull is not None:
        consistency = consistency_metrics(
            [(s.seed, s.trained.decoder) for s in seeds], pull.reference, pull.controls, d_in
        )
    return TrialResult(
        seeds=seeds,
        stability=report,
        nulls=nulls,
        representative_seed=rep,
        representative_reason=(
            "medoid: the seed whose decoder has the highest mean pw_mcc to the other seeds"
        ),
        recon_mean=_mean_recon([s.recon for s in seeds]),
        seconds=time.perf_counter() - start + before,
        consistency=consistency,
        consistency_scale=scale,
        evals=evals,
    )


def _stack_share(trained: Trained) -> float:
    """Seconds of a shared stack credited to one trial: its seeds' and its nulls' shares
    (each member of a stack is credited an equal share of its wall time)."""
    seeds = list(trained.seeds)  # a bundle's are a list: reading them consumes nothing
    return sum(t.seconds for t in seeds) + sum(n.seconds for n in trained.nulls.values())


def _mean_recon(recons: list[ReconMetrics]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for f in RECON_FIELDS:
        vals = [getattr(r, f) for r in recons]
        # A metric missing for any seed is missing for the trial, never averaged as 0.
        out[f] = None if any(v is None for v in vals) else sum(vals) / len(vals)
    return out
