"""Plots of single runs: PNG figures the stages log next to the numbers they show (the base
model's training curves with matplotlib, a trial's cross-seed heatmap with Pillow). The
sweep's report: `sweep_report`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


MISSING_RGB = (232, 226, 214)  # a warm grey: no text antialiased on white or viridis makes it


def plot_stability_heatmap(
    trained: dict[str, np.ndarray],
    random: dict[str, np.ndarray],
    seeds: list[int],
    path: Path,
    title: str = "",
) -> Path:
    """Pairwise pw_mcc and mmcs across seeds, trained beside the untrained initialisations:
    four panels on one colour scale (viridis, 0 to 1), each cell's value written in it.

    Drawn with Pillow, not a matplotlib figure: every trial of a sweep draws one, and a
    four-axes figure took 0.3-0.7 s (most of a small trial's recording); this takes
    milliseconds."""
    panels = [
        ("pw_mcc", trained, "trained"),
        ("pw_mcc", random, "random init"),
        ("mmcs", trained, "trained"),
        ("mmcs", random, "random init"),
    ]
    n = len(seeds)
    cell = max(28, min(72, 288 // max(n, 1)))
    side = cell * n
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=11)
    margin, gap, top, bottom = 48, 36, 72, 44
    bar_w, bar_gap = 14, 28
    width = margin + 4 * side + 3 * gap + bar_gap + bar_w + 44
    img = Image.new("RGB", (width, top + side + bottom), "white")
    draw = ImageDraw.Draw(img)
    draw.text((width // 2, 8), f"Cross-seed stability {title}".strip(), "black", font, "ma")
    viridis = matplotlib.colormaps["viridis"]
    labels = [str(s) for s in seeds]
    for p, (metric, mats, which) in enumerate(panels):
        raw = mats[metric].astype(float)
        m = np.clip(raw, 0.0, 1.0)  # the colour; the text says the value itself
        np.fill_diagonal(m, 1.0)
        missing = np.isnan(m)  # not computable: MISSING_RGB and "n/a", never coloured as a value
        x0 = margin + p * (side + gap)
        rgb = (viridis(np.nan_to_num(m))[:, :, :3] * 255).astype(np.uint8)
        rgb[missing] = MISSING_RGB
        block = Image.fromarray(rgb).resize((side, side), Image.Resampling.NEAREST)
        img.paste(block, (x0, top))
        draw.text((x0 + side // 2, top - 24), f"{metric} ({which})", "black", font, "ma")
        names_ = labels if which == "trained" else [str(i) for i in range(n)]
        for i in range(n):
            cx, cy = x0 + i * cell + cell // 2, top + i * cell + cell // 2
            draw.text((cx, top + side + 4), names_[i], "black", small, "ma")
            draw.text((x0 - 4, cy), names_[i], "black", small, "rm")
            for j in range(n):
                if i != j:
                    xy = (x0 + j * cell + cell // 2, cy)
                    if missing[i, j]:
                        draw.text(xy, "n/a", "black", small, "mm")
                        continue
                    shade = "black" if m[i, j] > 0.6 else "white"  # readable on viridis
                    draw.text(xy, f"{raw[i, j]:.2f}", shade, small, "mm")
        draw.text((x0 + side // 2, top + side + 20), "seed", "black", small, "ma")
    # The colour scale: 0 at the bottom, 1 at the top.
    bx = margin + 4 * side + 3 * gap + bar_gap
    ramp = (viridis(np.linspace(1, 0, side))[:, :3] * 255).astype(np.uint8)
    img.paste(Image.fromarray(np.repeat(ramp[:, None, :], bar_w, axis=1)), (bx, top))
    for v in (0.0, 0.5, 1.0):
        draw.text(
            (bx + bar_w + 4, top + round((1 - v) * (side - 1))), f"{v:g}", "black", small, "lm"
        )
    img.save(path, "PNG")
    return path
