"""One line per trial on the terminal while a sweep runs, under an overall progress bar: a
Ray Tune callback.

Ray Tune's own reporter prints every metric of every result in boxes (dozens of stability keys
per trial); a researcher watching a sweep wants the recipe, how far it got and the objective.
The full numbers are in MLflow. The lines themselves are `husai.console`'s.

A tracking server that stops answering mid-sweep: the trial that meets it reports it and waits
(`wait_to_be_stopped`); the driver (`TrackingWatch`) stops the sweep as Ctrl-C would, makes no
further MLflow call, and says to --resume once the server is back.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from typing import Any

from ray import tune
from ray.tune import Callback
from tqdm.auto import tqdm

from husai import console, names
from husai.config.sweep.spec import load_sweep
from husai.core.errors import TrackingLost
from husai.run.sweep.bundles import points_of, shown_params


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


class TrialLines(Callback):
    """Prints `trial i/N` start and end lines above a `trials done / N` bar; picklable (Tune
    saves callbacks for resume; the bar is made again after a restore)."""

    def __init__(self, sweep_path: str, n_samples: int, objective: str) -> None:
        self.sweep = load_sweep(sweep_path)  # read once, not at every trial line
        self.n_samples = n_samples
        self.objective = objective
        self.started: dict[str, float] = {}
        self.numbers: dict[str, int] = {}
        self.ended: set[str] = set()
        self._bar: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bar": None}  # a terminal bar is not state

    def _say(self, line: str, ended: Any = None) -> None:
        """The line above the bar; a trial that ended moves the bar on."""
        if self._bar is None:
            self._bar = tqdm(
                total=self.n_samples, initial=len(self.ended), desc="sweep", unit="trial"
            )
        self._bar.write(line, file=sys.stderr)  # where console.say puts them
        if ended is not None and ended.trial_id not in self.ended:
            self.ended.add(ended.trial_id)
            self._bar.update(1)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _line(self, trial: Any, what: str) -> str:
        n = self.numbers.setdefault(trial.trial_id, len(self.numbers) + 1)
        params = shown_params(points_of(self.sweep, trial.config))  # a bundle: k 8|16|32
        return console.trial_line(n, self.n_samples, params, what)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.monotonic()
        self._say(self._line(trial, "started"))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        secs = time.monotonic() - self.started.get(trial.trial_id, time.monotonic())
        if names.TUNE_TRIAL_ERROR in r:
            self._say(self._line(trial, f"FAILED: {r[names.TUNE_TRIAL_ERROR]}"), trial)
        elif names.TUNE_BUNDLE_RUN_IDS in r:  # each point's numbers are in MLflow and the table
            n = len(str(r[names.TUNE_BUNDLE_RUN_IDS]).split(","))
            self._say(self._line(trial, console.bundle_done(secs, n)), trial)
        elif names.TUNE_TRIAL_RUN_ID in r:
            value, ev = _finite(r.get(self.objective)), _finite(r.get(names.RECON_EV))
            dup = str(r[names.TUNE_TRIAL_RUN_ID]) if r.get(names.TUNE_DUPLICATE) else None
            done = console.trial_done(secs, self.objective, value, ev, dup)
            self._say(self._line(trial, done), trial)
        else:
            done = r.get(names.TUNE_SEEDS_DONE, 0)
            fvu = r.get(names.TUNE_ASHA_METRIC, float("nan"))
            self._say(self._line(trial, console.trial_stopped(secs, done, fvu)), trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(self._line(trial, "attempt lost (its worker or node died): running it again"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(self._line(trial, f"FAILED (see the Ray log under {trial.path})"), trial)


class TrackingWatch(Callback):
    """In the driver: the first trial that reports its tracking server gone (a result with
    `TUNE_TRACKING_LOST`) stops the sweep as Ctrl-C would. SIGUSR1 is Tune's own stop signal:
    it saves its state with the running trials unfinished, so --resume runs them again."""

    def __init__(self) -> None:
        self.why: str | None = None

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        why = result.get(names.TUNE_TRACKING_LOST)
        if why and self.why is None:
            self.why = str(why)
            console.say(f"sweep stopping: {why}")
            # Tune's own lines on this signal advise Tuner.restore: --resume is the way here.
            logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
            os.kill(os.getpid(), signal.SIGUSR1)


LOST_WAIT_S = 600.0  # how long a trial whose server went away waits for the driver to stop it


def wait_to_be_stopped(why: str, last: dict[str, Any]) -> None:
    """In a trial: report the lost tracking server (with `last`, its newest report), then wait.
    The driver's `TrackingWatch` stops the sweep on this report and Tune saves this trial
    unfinished, so that --resume runs it again; returning would mark it finished."""
    tune.report({**last, names.TUNE_TRACKING_LOST: why})
    time.sleep(LOST_WAIT_S)
    raise TrackingLost(why)  # not stopped: an errored trial, which --resume also runs again
