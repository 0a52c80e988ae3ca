"""The driver's activation sets (`husai.run.sweep.sets`): one per value of the swept activation
fields, each trial finding its own; on the task's base model (trained 6 steps, so fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from husai.config.sweep.spec import load_sweep
from husai.core.errors import ConfigError
from husai.registry.tracking import Tracker
from husai.run.sweep.sets import plan_sets, ref_for, resolve_sets
from tests.helpers import write_sweep

HOOKS = ["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.0.mlp.hook_post"]


@pytest.mark.slow
def test_a_hook_sweep_resolves_one_set_per_hook_and_each_trial_finds_its_own(
    tmp_path: Path, tracker: Tracker
) -> None:
    space = {"activations.hook": {"type": "categorical", "choices": HOOKS}}
    sweep = load_sweep(write_sweep(tmp_path, search_space=space))
    sets = resolve_sets(plan_sets(sweep, False), tracker, allow_memorised=True)
    assert [r.hook for r in sets.refs] == HOOKS and len({r.key for r in sets.refs}) == 3
    assert [r.d_in for r in sets.refs] == [16, 16, 32]  # d_model, d_model, d_mlp
    assert sets.base_run_id is not None and sets.base_version == "1"  # one base model for all
    assert all(r.random_base_key for r in sets.refs)  # each hook's own random-base null
    assert ref_for(sets.refs, {"activations.hook": HOOKS[2], "sae.k": 2}) == sets.refs[2]
    assert sets.key.startswith("sets-")  # the sweep run records all of them as one
    # Found, not extracted again: the same keys.
    again = resolve_sets(plan_sets(sweep, False), tracker, allow_memorised=True)
    assert again.refs == sets.refs


def test_a_hook_the_model_lacks_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    space = {"activations.hook": {"type": "categorical", "choices": ["blocks.5.hook_resid_post"]}}
    sweep = load_sweep(write_sweep(tmp_path, search_space=space))
    with pytest.raises(ConfigError, match="blocks.5.hook_resid_post"):
        plan_sets(sweep, False)
