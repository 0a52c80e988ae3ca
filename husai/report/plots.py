"""Plots of single runs: PNG figures the stages log next to the numbers they show (the base
model's training curves, a trial's cross-seed heatmap). The sweep's report: `sweep_report`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:  # the type only: importing the model (torch, TransformerLens) costs seconds
    from husai.model.base_model import BaseCurves


def plot_base_curves(curves: BaseCurves, path: Path, title: str = "") -> Path:
    """Loss (log scale) and accuracy, train vs held-out, against step."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(curves.steps, curves.train_loss, label="train")
    ax_loss.plot(curves.steps, curves.test_loss, label="held-out")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_acc.plot(curves.steps, curves.train_acc, label="train")
    ax_acc.plot(curves.steps, curves.test_acc, label="held-out")
    ax_acc.axhline(0.99, color="grey", linestyle=":", linewidth=1, label="0.99")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.suptitle(f"Base model {title}".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_stability_heatmap(
    trained: dict[str, np.ndarray],
    random: dict[str, np.ndarray],
    seeds: list[int],
    path: Path,
    title: str = "",
) -> Path:
    """Pairwise pw_mcc and mmcs across seeds, trained beside the untrained initialisations."""
    panels = [
        ("pw_mcc", trained, "trained"),
        ("pw_mcc", random, "random init"),
        ("mmcs", trained, "trained"),
        ("mmcs", random, "random init"),
    ]
    # Drawn once: bbox_inches="tight" would draw the figure twice (half of a trial's recording).
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    fig.subplots_adjust(left=0.04, right=0.88, bottom=0.12, top=0.82, wspace=0.3)
    labels = [str(s) for s in seeds]
    for ax, (metric, mats, which) in zip(axes, panels, strict=True):
        m = mats[metric].copy()
        np.fill_diagonal(m, 1.0)
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        n = m.shape[0]
        for i in range(n):
            for j in range(n):
                if i != j:
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(n), labels if which == "trained" else range(n))
        ax.set_yticks(range(n), labels if which == "trained" else range(n))
        ax.set_title(f"{metric} ({which})")
        ax.set_xlabel("seed")
    fig.colorbar(im, cax=fig.add_axes((0.9, 0.15, 0.012, 0.64)))
    fig.suptitle(f"Cross-seed stability {title}".strip())
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
