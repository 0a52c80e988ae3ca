"""SAEBench-style sparse probing, local stand-in (docs/metrics.md, "Local evals").

Per binary task (`tasks`: attributes of c, and Fourier tasks the representation makes linearly
decodable) and per feature set (the SAE's latents, or one of its feature nulls'):
- for each k in `ks`: the k latents with the largest class-mean difference, then an L1 logistic
  regression on them. k is chosen by stratified `CV_FOLDS`-fold cross-validation on the
  SAE-train rows (selection and fit inside each fold), never on held-out rows;
- with the chosen k, refit on all SAE-train rows; the score is the AUC on the held-out rows.
The feature nulls (`feature_nulls`) are probed with the k the SAE's cross-validation chose for
each task (no choice of their own). Beside them, per task and shared by every seed: a logistic
probe on the raw activations (the `baseline`). `probe_delta` = SAE AUC - raw AUC (mean over
tasks); `probe_excess` = SAE AUC - the stronger null's AUC: what the SAE's training added over
features that learned nothing. With OOD rows, the chosen SAE probe is also scored on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn import config_context
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

CV_FOLDS = 3


@dataclass(frozen=True)
class TaskProbe:
    """One feature set probed on one task."""

    task: str
    auc: float  # held-out rows, at the k chosen by CV on SAE-train rows (or given)
    best_k: int
    cv_auc_by_k: dict[int, float]  # {} when k was given
    ood_auc: float | None  # the chosen probe on the shifted slice; None: no slice or one class


@dataclass(frozen=True)
class ProbeResult:
    """One SAE (one seed) on every task: its latents, the stronger feature null, the raw
    probe."""

    sae: list[TaskProbe]
    null: list[TaskProbe]
    baseline: dict[str, float]  # task -> raw-activation probe AUC
    null_name: str = ""  # which feature null (names.EVAL_NULLS) was the stronger

    @property
    def sae_auc(self) -> float:
        return float(np.mean([t.auc for t in self.sae]))

    @property
    def null_auc(self) -> float:
        return float(np.mean([t.auc for t in self.null]))

    @property
    def baseline_auc(self) -> float:
        return float(np.mean([self.baseline[t.task] for t in self.sae]))

    @property
    def delta(self) -> float:
        return self.sae_auc - self.baseline_auc

    @property
    def excess(self) -> float:
        return self.sae_auc - self.null_auc

    @property
    def ood_drop(self) -> float | None:
        """Mean over tasks of AUC in distribution - AUC on the shifted slice, over the tasks
        whose labels take both values there (e.g. c < p/2 is constant on the default slice of
        large operands: its AUC is undefined and it is left out); None if no task qualifies or
        there is no shifted slice."""
        drops = [t.auc - t.ood_auc for t in self.sae if t.ood_auc is not None]
        return float(np.mean(drops)) if drops else None


def top_latents(z: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k latents whose class means differ most (SAEBench's selection)."""
    diff = np.abs(z[y == 1].mean(axis=0) - z[y == 0].mean(axis=0))
    return np.argsort(-diff, kind="stable")[:k]


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) identity, ties counted half: what
    sklearn.metrics.roc_auc_score returns, without its per-call validation (probing calls it
    hundreds of times per trial)."""
    ranks = rankdata(score)
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    return roc_auc(y, score) if len(np.unique(y)) == 2 else None


class _Probe:
    """Top-k selection (`idx`, or every column), scaling and a logistic regression."""

    def __init__(self, z: np.ndarray, y: np.ndarray, idx: np.ndarray | None, l1: bool) -> None:
        self.idx = np.arange(z.shape[1]) if idx is None else idx
        self.scaler = StandardScaler().fit(z[:, self.idx])
        # l1_ratio 1 = L1 (sparse probe), 0 = L2 (raw baseline); sklearn 1.8 deprecated `penalty`.
        self.clf = LogisticRegression(
            l1_ratio=1.0 if l1 else 0.0, solver="liblinear", C=1.0, max_iter=1000, random_state=0
        ).fit(self.scaler.transform(z[:, self.idx]), y)

    def score(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(self.clf.decision_function(self.scaler.transform(z[:, self.idx])))


def usable(y_train: np.ndarray, y_test: np.ndarray) -> bool:
    """Both classes among the held-out rows, and enough of each among the train rows for CV."""
    return len(np.unique(y_test)) == 2 and int(np.bincount(y_train, minlength=2).min()) >= CV_FOLDS


def probe_task(
    task: str,
    z_train: np.ndarray,
    z_test: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    ks: Sequence[int],
    z_ood: np.ndarray | None = None,
    y_ood: np.ndarray | None = None,
    fixed_k: int | None = None,
) -> TaskProbe:
    """`ks`: the candidate k, chosen by CV on the train rows; `fixed_k`: use this k instead
    (a null probed with the SAE's choice)."""
    if not usable(y_train, y_test):
        raise ValueError(f"probe task {task}: needs both classes in the train and test rows")
    with config_context(assume_finite=True, skip_parameter_validation=True):
        cv_auc = {} if fixed_k is not None else _cv(z_train, y_train, ks)
        best_k = fixed_k if fixed_k is not None else max(cv_auc, key=lambda k: (cv_auc[k], -k))
        idx = top_latents(z_train, y_train, min(best_k, z_train.shape[1]))
        probe = _Probe(z_train, y_train, idx, l1=True)
        ood = None
        if z_ood is not None and y_ood is not None:
            ood = _auc(y_ood, probe.score(z_ood))
        auc = roc_auc(y_test, probe.score(z_test))
    return TaskProbe(task, auc, best_k, cv_auc, ood)


def _cv(z: np.ndarray, y: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Mean held-out-fold AUC per k, selection and fit inside each fold."""
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=0)
    cv: dict[int, list[float]] = {k: [] for k in ks}
    width = min(max(ks), z.shape[1])
    for tr, va in folds.split(z, y):
        # The top k are a prefix of the top max(ks): one ranking per fold.
        order = top_latents(z[tr], y[tr], width)
        for k in ks:
            probe = _Probe(z[tr], y[tr], order[:k], l1=True)
            cv[k].append(roc_auc(y[va], probe.score(z[va])))
    return {k: float(np.mean(v)) for k, v in cv.items()}


def raw_probe_auc(
    x_train: np.ndarray, x_test: np.ndarray, y_train: np.ndarray, y_test: np.ndarray
) -> float:
    """The baseline: an L2 logistic probe on every raw activation dimension, held-out AUC."""
    probe = _Probe(x_train, y_train, None, l1=False)
    return roc_auc(y_test, probe.score(x_test))
