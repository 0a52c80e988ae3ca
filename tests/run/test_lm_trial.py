"""A trial on a language model's activations, end to end through the CLI: `husai extract`
caches and records the set once, `husai trial` trains on it (and on it by key), and a budget
the corpus cannot fill is refused before anything is created. The model is a tiny randomly
initialised TransformerLens model with its own tokenizer; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from husai import names
from husai.cli import EXIT_BAD_INPUT, main
from husai.core.cache import check_dir
from husai.registry.tracking import Tracker
from tests.helpers import lm_activations_cfg, runs_of_kind, store_path, tiny_lm, write_cfg

pytestmark = pytest.mark.slow


def test_a_trial_trains_on_a_language_models_activations(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model, corpus = tiny_lm(tmp_path / "lm")
    train = {
        "steps": 200,
        "batch_size": 128,
        "lr_warmup_steps": 10,
        "lr_decay_steps": 20,
        "log_every": 20,
    }
    extra = {"activations": lm_activations_cfg(model, corpus), "train": train}
    cfg = write_cfg(tmp_path, extra, {"name": "lm"})
    assert main(["extract", "--config", str(cfg)]) == 0
    assert main(["extract", "--config", str(cfg)]) == 0  # found, not extracted again
    tracker = Tracker(isolated_store)
    (acts_run,) = runs_of_kind(tracker, names.KIND_ACTIVATIONS)
    params = acts_run.data.params
    assert params[names.PARAM_ACT_SOURCE] == "transformer_lens"
    assert params[names.PARAM_LM_MODEL] == str(model)
    assert len(params[names.PARAM_LM_CORPUS_SHA256]) == 64
    metrics = acts_run.data.metrics
    assert (metrics[names.ACT_N_TRAIN], metrics[names.ACT_N_EVAL]) == (1200, 300)
    assert metrics[names.ACT_N_TRAIN_DOCS] + metrics[names.ACT_N_EVAL_DOCS] == 80
    key = params[names.PARAM_ACTIVATION_KEY]
    entry = tmp_path / "cache" / "activations" / key
    assert check_dir(entry) is None  # checksummed like the task's entries
    assert "cache hit (disk)" in capsys.readouterr().out

    assert main(["trial", "--config", str(cfg)]) == 0
    (trial,) = runs_of_kind(tracker, names.KIND_TRIAL)
    assert trial.data.tags[names.TAG_ACTIVATION_SOURCE] == "transformer_lens"
    assert trial.data.params[names.PARAM_ACTIVATION_KEY] == key
    assert 0 < trial.data.metrics[names.RECON_EV] <= 1
    assert 0 < trial.data.metrics[names.RECON_LOSS_RECOVERED] <= 1.05  # spliced into the LM
    assert 0 < trial.data.metrics[names.RECON_LOSS_RECOVERED_ZERO] <= 1.05
    assert len(runs_of_kind(tracker, names.KIND_SEED)) == 3
    # The random-base null: the same architecture freshly initialised, over the same tokens.
    (null_run,) = runs_of_kind(tracker, names.KIND_NULL_ACTIVATIONS)
    assert null_run.data.params[names.PARAM_NULL] == names.NULL_RANDOM_BASE
    assert null_run.data.params[names.PARAM_LM_MODEL_SHA256] != params[names.PARAM_LM_MODEL_SHA256]
    rb = names.stability_key(names.STABILITY_BASES[0], names.null_suffix(names.NULL_RANDOM_BASE))
    assert rb in trial.data.metrics
    # The same set by key: the recorded trial is found (same config hash and rows).
    assert main(["trial", "--config", str(cfg), "--activation-key", key]) == 0
    assert "already recorded" in capsys.readouterr().out
    assert len(runs_of_kind(tracker, names.KIND_TRIAL)) == 1


@pytest.mark.fresh_store
def test_a_budget_the_corpus_cannot_fill_creates_nothing(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model, corpus = tiny_lm(tmp_path / "lm", n_docs=10, train_steps=0)
    acts = lm_activations_cfg(model, corpus)
    cfg = write_cfg(tmp_path, {"activations": acts}, {"name": "lm"})
    assert main(["trial", "--config", str(cfg)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "activations.lm.token_budget" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache" / "activations").exists()
    assert not store_path(isolated_store).exists()  # checked before the store is opened
