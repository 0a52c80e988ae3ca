"""The nulls of a trial: every draw derives from the trial's own seeds (so a confirmation on
fresh seeds gets fresh nulls, and a trial on the same seeds the same ones), the surrogate
trains on seeds disjoint from the trial's with its alive latents counted, and trained nulls
are cached across lambda."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import husai.measure.stack
from husai import names
from husai.config.loading import load
from husai.measure.nulls import null_decoders
from husai.measure.trial import TrialResult, run_trial
from husai.model.activations import load_user_activations
from tests.helpers import user_acts, write_cfg


def _nulls(tmp_path: Path, seeds: list[int], lam: float = 0.0):  # noqa: ANN202
    cfg = load(
        write_cfg(
            tmp_path,
            {
                "trial": {"seeds": seeds, "nulls": ["isotropic", "covariance", "surrogate"]},
                "consistency": {"lambda": lam},
            },
        )
    )
    acts = load_user_activations(user_acts(tmp_path), cfg.activations)
    return cfg, null_decoders(cfg, acts, None)


def test_null_draws_follow_the_trials_seeds(tmp_path: Path) -> None:
    _, search = _nulls(tmp_path, [0, 1, 2])
    _, again = _nulls(tmp_path, [0, 1, 2])
    _, fresh = _nulls(tmp_path, [3, 4, 5])
    _, shared = _nulls(tmp_path, [0, 7, 8])
    for null in (names.NULL_ISOTROPIC, names.NULL_COVARIANCE):
        first, same = search.decoders[null].decoders, again.decoders[null].decoders
        assert all(torch.equal(a, b) for a, b in zip(first, same, strict=True))
        # A confirmation's fresh seeds: fresh draws, none equal to the search's.
        assert not any(torch.equal(a, b) for a in first for b in fresh.decoders[null].decoders)
        # The draw of seed 0 is seed 0's, whichever trial it is in.
        assert torch.equal(first[0], shared.decoders[null].decoders[0])
    assert not torch.equal(
        search.decoders["surrogate"].decoders[0], fresh.decoders["surrogate"].decoders[0]
    )


def test_the_surrogate_has_its_own_seeds_alive_masks_and_is_shared_across_lambda(
    tmp_path: Path,
) -> None:
    cfg, plain = _nulls(tmp_path, [0, 1, 2])
    assert set(cfg.trial.surrogate_seeds()).isdisjoint(cfg.trial.seeds)
    sur = plain.decoders["surrogate"]
    assert len(sur.decoders) == 3 and sur.alive is not None
    assert all(a.dtype == torch.bool and a.shape == (cfg.sae.d_sae,) for a in sur.alive)
    assert names.NULL_SURROGATE not in plain.cached and plain.seconds["surrogate"] > 0
    _, pulled = _nulls(tmp_path, [0, 1, 2], lam=0.5)  # another lambda: the same null, cached
    assert names.NULL_SURROGATE in pulled.cached
    again = pulled.decoders["surrogate"]
    assert all(torch.equal(a, b) for a, b in zip(sur.decoders, again.decoders, strict=True))
    assert again.alive is not None
    assert all(torch.equal(a, b) for a, b in zip(sur.alive, again.alive, strict=True))


def test_an_untrained_null_counts_every_latent_alive(tmp_path: Path) -> None:
    _, nulls = _nulls(tmp_path, [0, 1, 2])
    assert nulls.decoders["covariance"].alive is None
    assert nulls.decoders["isotropic"].alive is None
    with pytest.raises(KeyError):
        names.null_skipped_tag("strongest")


def test_trained_nulls_in_the_trials_stack_equal_those_trained_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nulls = ["isotropic", "covariance", "surrogate", "random_base"]
    cfg = load(write_cfg(tmp_path, {"trial": {"seeds": [0, 1, 2], "nulls": nulls}}))
    acts = load_user_activations(user_acts(tmp_path), cfg.activations)
    twin_file = tmp_path / "other"
    twin_file.mkdir()
    other = load_user_activations(user_acts(twin_file, ".pt"), cfg.activations)
    other = replace(other, train=other.train * 0.5 + 0.1, key="0" * 16)  # rows of its own

    def trial(cache: str, stacked: bool) -> TrialResult:
        monkeypatch.setenv("HUSAI_CACHE_DIR", str(tmp_path / cache))
        calls.clear()
        with monkeypatch.context() as m:
            if not stacked:
                m.setattr(husai.measure.stack, "stacks", lambda *_: False)
            return run_trial(cfg, acts, tmp_path / cache, progress=False, random_base=other)

    calls: list[int] = []
    real = husai.measure.stack.train_members
    monkeypatch.setattr(
        husai.measure.stack,
        "train_members",
        lambda *a, **k: calls.append(len(a[3])) or real(*a, **k),  # type: ignore[func-returns-value]
    )
    stacked = trial("stacked", True)
    assert calls == [9]  # 3 seeds + 3 surrogate + 3 random-base, one stack
    alone = trial("alone", False)
    assert calls == []
    again = trial("again", True)
    for s, t, u in zip(stacked.seeds, alone.seeds, again.seeds, strict=True):
        # The trial's own seeds: exactly what they are when trained alone.
        assert torch.equal(s.trained.decoder, t.trained.decoder)
        assert torch.equal(s.trained.decoder, u.trained.decoder)
    assert stacked.stability.metrics == again.stability.metrics  # deterministic
    for null in (names.NULL_SURROGATE, names.NULL_RANDOM_BASE):
        got, want = stacked.nulls.decoders[null], alone.nulls.decoders[null]
        for a, b in zip(got.decoders, want.decoders, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        assert got.alive is not None and want.alive is not None
        assert all(torch.equal(a, b) for a, b in zip(got.alive, want.alive, strict=True))
        assert stacked.nulls.seconds[null] > 0
    # Cached like a null trained after the trial: a trial on other lambda reuses it.
    cached = trial("stacked", True)
    assert calls == [] and set(cached.nulls.cached) == {"surrogate", "random_base"}
