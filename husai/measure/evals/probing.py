"""SAEBench-style sparse probing, local stand-in (docs/design.md, "Evals").

Per binary task: the k latents with the largest class-mean difference on the probe-train rows
(k in `ks`), an L1 logistic regression on those k latents, test AUC on held-out rows. The SAE's
score for a task is its best AUC over k (SAEBench reports each k; the best is what the gate
compares). Baseline: a logistic probe on the raw activations, same rows. `probe_delta` =
mean over tasks of (SAE AUC - baseline AUC). With OOD rows, the chosen probe is also scored on
them (AUC in distribution - out = the OOD probe drop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler


@dataclass(frozen=True)
class TaskProbe:
    task: str
    sae_auc: float  # best over k, held-out rows
    best_k: int
    auc_by_k: dict[int, float]
    baseline_auc: float
    ood_auc: float | None  # best-k probe on the shifted slice; None: no slice or one class there


@dataclass(frozen=True)
class ProbeResult:
    """One SAE (one seed) on every task."""

    tasks: list[TaskProbe]

    @property
    def sae_auc(self) -> float:
        return float(np.mean([t.sae_auc for t in self.tasks]))

    @property
    def baseline_auc(self) -> float:
        return float(np.mean([t.baseline_auc for t in self.tasks]))

    @property
    def delta(self) -> float:
        return self.sae_auc - self.baseline_auc

    @property
    def ood_drop(self) -> float | None:
        """Mean over tasks of AUC in distribution - AUC on the shifted slice, over the tasks
        whose labels take both values there (e.g. c < p/2 is constant on the default slice of
        large operands: its AUC is undefined and it is left out); None if no task qualifies or
        there is no shifted slice."""
        drops = [t.sae_auc - t.ood_auc for t in self.tasks if t.ood_auc is not None]
        return float(np.mean(drops)) if drops else None


def top_latents(z: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k latents whose class means differ most (SAEBench's selection)."""
    diff = np.abs(z[y == 1].mean(axis=0) - z[y == 0].mean(axis=0))
    return np.argsort(-diff, kind="stable")[:k]


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else None


def _fit(x: np.ndarray, y: np.ndarray, l1: bool) -> tuple[StandardScaler, LogisticRegression]:
    scaler = StandardScaler().fit(x)
    # l1_ratio 1 = L1 (sparse probe), 0 = L2 (baseline); scikit-learn 1.8 deprecated `penalty`.
    clf = LogisticRegression(
        l1_ratio=1.0 if l1 else 0.0, solver="liblinear", C=1.0, max_iter=1000, random_state=0
    )
    return scaler, clf.fit(scaler.transform(x), y)


def probe_task(
    task: str,
    z_train: np.ndarray,
    z_test: np.ndarray,
    x_train: np.ndarray,
    x_test: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    ks: Sequence[int],
    z_ood: np.ndarray | None = None,
    y_ood: np.ndarray | None = None,
) -> TaskProbe:
    if len(np.unique(y_train)) < 2 or len(np.unique(y_test)) < 2:
        raise ValueError(f"probe task {task}: needs both classes in the train and test rows")
    auc_by_k, probes = {}, {}
    for k in ks:
        idx = top_latents(z_train, y_train, min(k, z_train.shape[1]))
        scaler, clf = _fit(z_train[:, idx], y_train, l1=True)
        auc = roc_auc_score(y_test, clf.decision_function(scaler.transform(z_test[:, idx])))
        auc_by_k[k], probes[k] = float(auc), (idx, scaler, clf)
    best_k = max(auc_by_k, key=lambda k: (auc_by_k[k], -k))
    scaler_x, clf_x = _fit(x_train, y_train, l1=False)
    baseline = roc_auc_score(y_test, clf_x.decision_function(scaler_x.transform(x_test)))
    ood_auc = None
    if z_ood is not None and y_ood is not None:
        idx, scaler, clf = probes[best_k]
        ood_auc = _auc(y_ood, clf.decision_function(scaler.transform(z_ood[:, idx])))
    return TaskProbe(
        task=task,
        sae_auc=auc_by_k[best_k],
        best_k=best_k,
        auc_by_k=auc_by_k,
        baseline_auc=float(baseline),
        ood_auc=ood_auc,
    )
