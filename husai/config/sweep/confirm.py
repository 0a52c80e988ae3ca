"""The confirmation's recipe: the best search trial's swept values read back from its run's
params, fresh seeds disjoint from every seed the search used, and (by default) a fresh
SAE-train / SAE-eval split. Part of the config layer; `husai.run.sweep.confirm` runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from husai.config.experiment import ExperimentConfig
from husai.config.loading import from_dict
from husai.config.sweep.parts import CATEGORICAL_FIELDS, INTEGER_FIELDS, PARAM_OF
from husai.config.sweep.spec import SweepConfig


def recipe_from_params(sweep: SweepConfig, params: Mapping[str, str]) -> dict[str, Any]:
    """The sampled values of a recorded trial, from its run's params (strings)."""
    out: dict[str, Any] = {}
    for path in sweep.swept_paths():
        raw = params[PARAM_OF[path]]
        if path in CATEGORICAL_FIELDS:
            out[path] = raw
        elif path in INTEGER_FIELDS:
            out[path] = int(raw)
        else:
            out[path] = float(raw)
    return out


def confirm_seeds(cfg: ExperimentConfig, n: int) -> tuple[int, ...]:
    """n training seeds disjoint from every seed the search used: its training seeds, the seeds
    of their untrained and surrogate-null SAEs, the reference, and with none of the new seeds'
    own null seeds among them."""
    t = cfg.trial
    off = t.random_seed_offset

    def derived(s: int) -> set[int]:
        return {s + off, s + 2 * off}

    used = {*t.seeds, *(d for s in t.seeds for d in derived(s)), cfg.consistency.ref_seed}
    out: list[int] = []
    s = max(t.seeds) + 1
    while len(out) < n:
        if s not in used and not derived(s) & (used | set(out)):
            out.append(s)
            used |= derived(s)
        s += 1
    return tuple(out)


def confirm_config(sweep: SweepConfig, params: dict[str, Any], smoke: bool) -> ExperimentConfig:
    """The best recipe again on fresh seeds and (confirm.fresh_split) a fresh SAE-train /
    SAE-eval split: split_seed + 1. Registration is the confirmation stage's, after it."""
    cfg = sweep.trial_config(params, smoke, confirmation=True)
    n = sweep.smoke.confirm_seeds if smoke else sweep.confirm.n_seeds
    data = cfg.model_dump(by_alias=True)
    data["trial"] = {**data["trial"], "seeds": list(confirm_seeds(cfg, n)), "register_sae": False}
    if sweep.confirm.fresh_split:
        split = cfg.activations.split_seed + 1
        data["activations"] = {**data["activations"], "split_seed": split}
    return from_dict(data, f"sweep {sweep.name}: confirmation of {params}")
