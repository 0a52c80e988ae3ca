"""One line per trial on the terminal while a sweep runs (part of husai/tune.py's Ray code).

Ray Tune's own reporter prints every metric of every result in boxes (dozens of stability keys
per trial); a researcher watching a sweep wants the recipe, how far it got and the objective.
The full numbers are in MLflow.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from ray.tune import Callback

from husai import names


def recipe(params: dict[str, Any]) -> str:
    """`k 16  d_sae 256  lambda 0.00227` from sampled dotted params."""
    parts = []
    for path, value in params.items():
        label = path.rsplit(".", 1)[-1]
        parts.append(f"{label} {value:.3g}" if isinstance(value, float) else f"{label} {value}")
    return "  ".join(parts)


class TrialLines(Callback):
    """Prints `trial i/N` start and end lines; picklable (Tune saves callbacks for resume)."""

    def __init__(self, sweep_path: str, n_samples: int, objective: str) -> None:
        from husai.sweep_config import load_sweep

        self.sweep = load_sweep(sweep_path)  # read once, not at every trial line
        self.n_samples = n_samples
        self.objective = objective
        self.started: dict[str, float] = {}
        self.numbers: dict[str, int] = {}

    def _label(self, trial: Any) -> str:
        from husai.sweep_config import sampled_params

        n = self.numbers.setdefault(trial.trial_id, len(self.numbers) + 1)
        params = sampled_params(self.sweep, trial.config)
        return f"trial {n}/{self.n_samples} [{recipe(params)}]"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.monotonic()
        _say(f"{self._label(trial)} started")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from husai.tune import ASHA_METRIC, SEEDS_DONE, TRIAL_RUN_ID

        r = trial.last_result or {}
        secs = time.monotonic() - self.started.get(trial.trial_id, time.monotonic())
        if TRIAL_RUN_ID in r:
            value = r.get(self.objective)
            shown = f"{value:+.4f}" if _finite(value) else "absent"
            ev = r.get(names.RECON_EV)
            _say(
                f"{self._label(trial)} done in {secs:.0f} s: {self.objective} {shown}, "
                f"recon/ev {ev:.4f}"
                if _finite(ev)
                else f"{self._label(trial)} done in {secs:.0f} s: {self.objective} {shown}"
            )
        else:
            _say(
                f"{self._label(trial)} stopped early by ASHA after {r.get(SEEDS_DONE, 0)} seed(s) "
                f"(held-out {ASHA_METRIC} {r.get(ASHA_METRIC, float('nan')):.4f}), {secs:.0f} s"
            )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _say(f"{self._label(trial)} FAILED (see the Ray log under {trial.path})")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
