"""What the evals of one trial measured, and its numbers by MLflow key (docs/metrics.md).

Seed runs carry each seed's own numbers; the trial run carries means over seeds, per-task and
per-attribute means, and t-intervals over seeds (the seeds are the independent units: each
seed's SAE and its own stronger feature null give one difference). A number that could not be
computed is absent, never 0, and a tag says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from husai import names
from husai.measure.evals.contrastive import ContrastiveResult
from husai.measure.evals.ood import OODResult
from husai.measure.evals.probing import ProbeResult
from husai.measure.evals.transcoder import TranscoderStress
from husai.measure.intervals import Interval, seed_mean_interval

NO_PLAIN_RECIPE = "lambda = 0: this recipe is its own baseline, so there is nothing to compare"
PLAIN_UNKNOWN = "the lambda = 0 recipe's contrastive scores are not recorded for every seed"


@dataclass(frozen=True)
class ContrastiveScores:
    """One seed: its SAE's score and its stronger feature null's, on the same pairs."""

    sae: ContrastiveResult
    null: ContrastiveResult
    null_name: str = ""  # which feature null (names.EVAL_NULLS) was the stronger

    @property
    def excess(self) -> float:
        return self.sae.score - self.null.score


@dataclass
class EvalResults:
    """Every eval of one trial (absent where switched off or skipped, with the reason)."""

    transcoder: TranscoderStress | None = None
    ood: dict[int, OODResult] = field(default_factory=dict)
    probing: dict[int, ProbeResult] = field(default_factory=dict)
    contrastive: dict[int, ContrastiveScores] = field(default_factory=dict)
    probe_frequencies: list[int] = field(default_factory=list)  # the Fourier tasks' f
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # eval -> why it could not run

    def contrastive_scores(self) -> dict[int, float]:
        """Seed -> the SAE's contrastive score (what a lambda > 0 trial compares with)."""
        return {s: r.sae.score for s, r in self.contrastive.items()}

    def tags(self, plain_contrastive: dict[int, float] | None) -> dict[str, str]:
        """Why an eval was skipped or the contrastive delta is absent; the probe's Fourier
        frequencies; that the transcoder stress came from the cache."""
        out = {names.eval_skipped_tag(k): why for k, why in self.skipped.items()}
        if self.transcoder is not None and self.transcoder.cached:
            out[names.TAG_TRANSCODER_CACHED] = "true"
        if self.probing and self.probe_frequencies:
            out[names.TAG_PROBE_FREQUENCIES] = ",".join(map(str, self.probe_frequencies))
        for name, which in (
            ("probing", {s: r.null_name for s, r in self.probing.items()}),
            ("contrastive", {s: r.null_name for s, r in self.contrastive.items()}),
        ):
            if which:
                out[names.eval_null_tag(name)] = " ".join(f"{s}:{n}" for s, n in which.items())
        if self.contrastive and self._contrastive_delta(plain_contrastive) is None:
            why = NO_PLAIN_RECIPE if plain_contrastive is None else PLAIN_UNKNOWN
            out[names.TAG_CONTRASTIVE_DELTA_ABSENT] = why
        return out

    def seed_metrics(self, seed: int) -> dict[str, float | None]:
        """One seed's own numbers (its seed run)."""
        out: dict[str, float | None] = {}
        if seed in self.ood:
            out.update(_ood_values(self.ood[seed]))
        if seed in self.probing:
            pr = self.probing[seed]
            out[names.LOCAL_PROBE_DELTA] = pr.delta
            out[names.LOCAL_PROBE_AUC] = pr.sae_auc
            out[names.LOCAL_PROBE_NULL_AUC] = pr.null_auc
            out[names.LOCAL_PROBE_EXCESS] = pr.excess
            out[names.STRESS_OOD_PROBE_DROP] = pr.ood_drop
        if seed in self.contrastive:
            c = self.contrastive[seed]
            out[names.LOCAL_CONTRASTIVE_SCORE] = c.sae.score
            out[names.LOCAL_CONTRASTIVE_NULL] = c.null.score
            out[names.LOCAL_CONTRASTIVE_EXCESS] = c.excess
        return out

    def trial_metrics(self, plain_contrastive: dict[int, float] | None) -> dict[str, float | None]:
        """Trial-level keys: means over seeds, t-intervals over seeds. `plain_contrastive` = the
        lambda = 0 recipe's contrastive score per seed (None: this trial is that recipe)."""
        out: dict[str, float | None] = {}
        if self.transcoder is not None:
            out.update(_transcoder_metrics(self.transcoder))
        if self.ood:
            per_seed = [_ood_values(o) for o in self.ood.values()]
            out.update({k: _mean(v[k] for v in per_seed) for k in per_seed[0]})
        if self.probing:
            out.update(self._probe_metrics())
        if self.contrastive:
            out.update(self._contrastive_metrics(plain_contrastive))
        for name, secs in self.seconds.items():
            out[names.eval_seconds_key(name)] = secs
        return out

    def _probe_metrics(self) -> dict[str, float | None]:
        runs = list(self.probing.values())
        out: dict[str, float | None] = {
            names.LOCAL_PROBE_AUC: _mean(r.sae_auc for r in runs),
            names.LOCAL_PROBE_BASELINE_AUC: runs[0].baseline_auc,
            names.LOCAL_PROBE_NULL_AUC: _mean(r.null_auc for r in runs),
        }
        out.update(_interval(names.PROBE_DELTA_KEYS, [r.delta for r in runs]))
        out.update(_interval(names.PROBE_EXCESS_KEYS, [r.excess for r in runs]))
        drops = [r.ood_drop for r in runs]
        # The same tasks qualify for every seed (labels do not depend on the SAE).
        out[names.STRESS_OOD_PROBE_DROP] = (
            None if any(d is None for d in drops) else _mean(d for d in drops if d is not None)
        )
        for i, task in enumerate(runs[0].sae):
            out[names.probe_task_key(task.task, "sae_auc")] = _mean(r.sae[i].auc for r in runs)
            out[names.probe_task_key(task.task, "null_auc")] = _mean(r.null[i].auc for r in runs)
            out[names.probe_task_key(task.task, "raw_auc")] = runs[0].baseline[task.task]
        return out

    def _contrastive_delta(self, plain: dict[int, float] | None) -> list[float] | None:
        scores = self.contrastive_scores()
        if plain is None or not all(s in plain for s in scores):
            return None
        return [scores[s] - plain[s] for s in scores]

    def _contrastive_metrics(self, plain: dict[int, float] | None) -> dict[str, float | None]:
        runs = list(self.contrastive.values())
        out: dict[str, float | None] = {
            names.LOCAL_CONTRASTIVE_SCORE: _mean(r.sae.score for r in runs),
            names.LOCAL_CONTRASTIVE_NULL: _mean(r.null.score for r in runs),
        }
        out.update(_interval(names.CONTRASTIVE_EXCESS_KEYS, [r.excess for r in runs]))
        diffs = self._contrastive_delta(plain)
        if diffs is not None:
            out.update(_interval(names.CONTRASTIVE_DELTA_KEYS, diffs))
        for i, a in enumerate(runs[0].sae.attributes):
            key = names.contrastive_attribute_key
            out[key(a.attribute, "score")] = _mean(r.sae.attributes[i].score for r in runs)
            out[key(a.attribute, "null")] = _mean(r.null.attributes[i].score for r in runs)
        return out


def _ood_values(o: OODResult) -> dict[str, float]:
    """One SAE's OOD numbers by key (seed runs; the trial run carries their means)."""
    return {
        names.STRESS_OOD_DROP: o.drop,
        names.STRESS_OOD_EV: o.ev_out,
        names.STRESS_OOD_FVU_RATIO: o.fvu_ratio,
        names.STRESS_OOD_FVU_RATIO_NULL_Q95: o.null_q95,
        names.STRESS_OOD_MSE_RATIO: o.mse_ratio,
        names.STRESS_OOD_MSE_RATIO_NULL_Q95: o.mse_null_q95,
    }


def _transcoder_metrics(t: TranscoderStress) -> dict[str, float | None]:
    return {
        names.STRESS_TRANSCODER_DELTA: t.delta,
        names.STRESS_TRANSCODER_DELTA_LCB: t.delta_lcb,
        names.STRESS_TRANSCODER_DELTA_UCB: t.delta_ucb,
        names.STRESS_TRANSCODER_PW_MCC: t.transcoder_pw_mcc,
        names.STRESS_MLP_IN_SAE_PW_MCC: t.sae_pw_mcc,
        names.STRESS_TRANSCODER_NULL_PW_MCC: t.transcoder_null_pw_mcc,
        names.STRESS_MLP_IN_NULL_PW_MCC: t.sae_null_pw_mcc,
        names.STRESS_TRANSCODER_EXCESS: t.transcoder_excess,
        names.STRESS_TRANSCODER_EXCESS_LCB: t.transcoder_excess_lcb,
        names.STRESS_TRANSCODER_EXCESS_UCB: t.transcoder_excess_ucb,
        names.STRESS_MLP_IN_SAE_EXCESS: t.sae_excess,
        names.STRESS_MLP_IN_SAE_EXCESS_LCB: t.sae_excess_lcb,
        names.STRESS_MLP_IN_SAE_EXCESS_UCB: t.sae_excess_ucb,
        names.STRESS_TRANSCODER_EXCESS_DELTA: t.excess_delta,
        names.STRESS_TRANSCODER_EXCESS_DELTA_LCB: t.excess_delta_lcb,
        names.STRESS_TRANSCODER_EXCESS_DELTA_UCB: t.excess_delta_ucb,
    }


def _interval(keys: tuple[str, str, str], per_seed: list[float]) -> dict[str, float | None]:
    """(value, lcb, ucb) keys -> the seed mean and its t-interval (bounds absent below 3
    seeds)."""
    i: Interval = seed_mean_interval(per_seed)
    return dict(zip(keys, (i.value, i.lcb, i.ucb), strict=True))


def _mean(values: Iterable[float]) -> float:
    return float(np.mean(list(values)))
