"""The stages: found in MLflow (or the local cache), else computed and recorded, on a real
temporary store: the base model, activations (disk, then MLflow, then compute), reference SAEs,
the shared pre-compute check, and the quick preset end to end."""

from __future__ import annotations

import shutil
import time
from functools import partial
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import husai
from husai import names
from husai.cli import main
from husai.config.experiment import ExperimentConfig
from husai.config.loading import from_dict
from husai.core.cache import check_copy, manifest_of, publish_dir
from husai.core.errors import InputError
from husai.model.activations import (
    ActivationCacheError,
    ActivationSet,
    load_activations,
    load_user_activations,
    save_activations,
)
from husai.model.base_model import readout_logits
from husai.model.task import make_modular_data
from husai.registry.tracking import Tracker
from husai.registry.trial_records import find_recorded_trial
from husai.run import stages
from tests.helpers import PNG_MAGIC, runs_of_kind, user_acts


def test_base_model_is_registered_then_reused(
    tracker: Tracker, tiny_cfg: ExperimentConfig, tmp_path: Path
) -> None:
    first = stages.base_model(tiny_cfg, tracker, progress=False)
    assert not first.reused and first.version == "1"
    run = tracker.client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[names.TAG_CONFIG_HASH] == tiny_cfg.base_hash()
    steps = [m.step for m in tracker.client.get_metric_history(first.run_id, names.BASE_TEST_ACC)]
    assert steps == [2, 4, 6]
    for key in (names.BASE_TRAIN_LOSS, names.BASE_TEST_LOSS, names.BASE_TRAIN_ACC):
        assert key in run.data.metrics
    arts = {a.path for a in tracker.client.list_artifacts(first.run_id, names.ARTIFACT_PLOTS)}
    assert arts == {f"{names.ARTIFACT_PLOTS}/{names.PLOT_BASE_CURVES}"}
    png = tracker.download(
        first.run_id, f"{names.ARTIFACT_PLOTS}/{names.PLOT_BASE_CURVES}", tmp_path / "dl"
    )
    assert png.read_bytes()[:8] == PNG_MAGIC

    mv = tracker.client.get_model_version(names.BASE_MODEL_NAME, "1")
    assert mv.tags[names.TAG_CONFIG_HASH] == tiny_cfg.base_hash()
    assert mv.tags[names.TAG_P] == "11"
    assert mv.tags[names.TAG_GENERALISED] in {"true", "false"}

    second = stages.base_model(tiny_cfg, Tracker(tracker.uri), progress=False)
    assert second.reused and second.version == "1" and second.run_id == first.run_id
    assert len(tracker.client.search_model_versions(f"name = '{names.BASE_MODEL_NAME}'")) == 1
    assert len(tracker.client.search_runs([run.info.experiment_id])) == 1
    with torch.no_grad():
        tokens = make_modular_data(11).tokens
        assert torch.equal(second.model(tokens), first.model(tokens))


def test_registered_base_model_loads_as_pyfunc(
    tracker: Tracker, tiny_cfg: ExperimentConfig
) -> None:
    handle = stages.base_model(tiny_cfg, tracker, progress=False)
    model = mlflow.pyfunc.load_model(f"models:/{names.BASE_MODEL_NAME}/{handle.version}")
    data = make_modular_data(11)
    pred = model.predict(pd.DataFrame({"a": data.a.numpy(), "b": data.b.numpy()}))
    expected = readout_logits(handle.model, data.tokens).argmax(-1).numpy()
    assert (pred.to_numpy() == expected).all()


def test_activations_miss_then_hit_from_disk_then_from_mlflow(
    tracker: Tracker, tiny_cfg: ExperimentConfig
) -> None:
    base = stages.base_model(tiny_cfg, tracker, progress=False)
    miss = stages.activations(tiny_cfg, base, tracker)
    assert not miss.cache_hit and miss.source == "computed"
    run = tracker.client.get_run(miss.run_id)
    assert run.data.params[names.PARAM_ACTIVATION_KEY] == miss.acts.key
    assert run.data.params[names.PARAM_BASE_VERSION] == base.version
    assert run.data.tags[names.TAG_CACHE] == "miss"

    hit = stages.activations(tiny_cfg, base, tracker)
    assert hit.cache_hit and hit.source == "disk" and hit.run_id == miss.run_id
    assert torch.equal(hit.acts.eval, miss.acts.eval)

    shutil.rmtree(miss.path)  # a new machine: the local cache is gone, MLflow still has it
    again = stages.activations(tiny_cfg, base, tracker)
    assert again.cache_hit and again.source == "mlflow" and again.run_id == miss.run_id
    assert torch.equal(again.acts.train, miss.acts.train)
    assert len(runs_of_kind(tracker, names.KIND_ACTIVATIONS)) == 1

    by_key = stages.activations_by_key(miss.acts.key, tracker)
    assert by_key.source == "disk" and by_key.run_id == miss.run_id
    shutil.rmtree(miss.path)
    fetched = stages.activations_by_key(miss.acts.key, tracker)
    assert fetched.source == "mlflow" and torch.equal(fetched.acts.eval, miss.acts.eval)
    with pytest.raises(InputError, match="activations.key: no activation set"):
        stages.activations_by_key("0123456789abcdef", tracker)


def test_a_changed_cache_entry_is_never_used(
    tracker: Tracker, tiny_cfg: ExperimentConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """The failure seen: values altered inside a cached activation file (same shapes) were
    trained on and recorded under the unchanged key. Now the entry fails its checksum, is
    fetched again from its MLflow run, and the console says so; a trial recorded from other
    rows than the ones at hand is not reused."""
    base = stages.base_model(tiny_cfg, tracker, progress=False)
    clean = stages.activations(tiny_cfg, base, tracker)
    file = clean.path / "acts.safetensors"
    tensors = load_file(str(file))
    tensors["train"] = tensors["train"] * 0.5  # same shapes, other values
    save_file(tensors, str(file))
    capsys.readouterr()
    again = stages.activations(tiny_cfg, base, tracker)
    out = capsys.readouterr().out
    assert f"cache entry {clean.path}: content does not match its checksum" in out
    assert f"fetching it again from MLflow run {clean.run_id}" in out
    assert again.source == "mlflow" and torch.equal(again.acts.train, clean.acts.train)
    assert again.acts.sha256 == clean.acts.sha256 is not None

    (again.path / "acts.safetensors").write_bytes(b"\x00" * 10)  # damaged beyond reading
    assert stages.activations(tiny_cfg, base, tracker).source == "mlflow"

    # The run's own copy altered in the artifact store: checked against the checksum recorded
    # on the run, not adopted; computed again (equal to the record, so the run is mended).
    recorded = tracker.get_run(clean.run_id).tags[names.TAG_CONTENT_SHA256]
    assert recorded == clean.acts.sha256
    artifact_uri = tracker.client.get_run(clean.run_id).info.artifact_uri
    stored = Path(artifact_uri.removeprefix("file://")) / names.ARTIFACT_ACTIVATIONS
    stored_file = stored / "acts.safetensors"
    save_file({**load_file(str(stored_file)), "train": tensors["train"]}, str(stored_file))
    shutil.rmtree(clean.path)
    with pytest.raises(ActivationCacheError, match=f"MLflow run {clean.run_id}, artifact"):
        stages.activations_by_key(clean.acts.key, tracker)  # nothing to compute it from
    capsys.readouterr()
    mended = stages.activations(tiny_cfg, base, tracker)
    out = capsys.readouterr().out
    assert "the copy does not match the checksum recorded with it" in out
    assert mended.source == "computed" and torch.equal(mended.acts.train, clean.acts.train)
    assert mended.run_id == clean.run_id and check_copy(stored, recorded) is None


def test_cache_rows_must_be_finite(tmp_path: Path) -> None:
    """NaN rows in a cache file crashed after training; now loading refuses them, naming the
    file (checked like a user's own activations)."""
    rows = torch.randn(8, 4)
    rows[2, 1] = float("nan")
    acts = ActivationSet("k", 5, "h", -1, rows, rows.clone(), torch.arange(8), torch.arange(8))
    path = publish_dir(tmp_path / "k", partial(save_activations, acts))
    with pytest.raises(ActivationCacheError, match=r"acts.safetensors: train rows hold NaN"):
        load_activations(path)


def test_a_trial_from_other_rows_is_not_reused(
    tracker: Tracker, tiny_cfg: ExperimentConfig
) -> None:
    """Our own lookup rule on hand-made runs (said so): a run that recorded a checksum of its
    rows is reused only for those rows; a run from before checksums, by key alone."""
    experiment = names.EXPERIMENT_SWEEP_PREFIX + tiny_cfg.name
    tags = {
        names.TAG_KIND: names.KIND_TRIAL,
        names.TAG_CONFIG_HASH: tiny_cfg.config_hash(),
        names.TAG_METRIC_VERSION: str(husai.metric_version),
    }
    params = {names.PARAM_ACTIVATION_KEY: "k"}
    with tracker.run(experiment, "t", {**tags, names.TAG_ACTIVATIONS_SHA256: "aa"}, params) as r:
        pass
    assert find_recorded_trial(tracker, tiny_cfg, "k", "aa") == r
    assert find_recorded_trial(tracker, tiny_cfg, "k", "bb") is None
    with tracker.run(experiment, "legacy", tags, params) as legacy:
        pass
    assert find_recorded_trial(tracker, tiny_cfg, "k", "bb") == legacy


def test_the_cache_lives_where_told(
    tracker: Tracker, tiny_cfg: ExperimentConfig, tmp_path: Path
) -> None:
    base = stages.base_model(tiny_cfg, tracker, progress=False)
    h = stages.activations(tiny_cfg, base, tracker, cache_dir=tmp_path / "elsewhere")
    assert h.path.is_relative_to(tmp_path / "elsewhere")
    assert load_activations(h.path, h.acts.key).key == h.acts.key


def test_cached_entry_takes_disk_then_mlflow_then_compute(tracker: Tracker, tmp_path: Path) -> None:
    """The one seam of folder-cached stages, on a plain folder (our own logic, said so here)."""
    computed: list[str] = []

    def write(text: str) -> stages.Writer:
        return lambda dst: (dst / "x.txt").write_text(text)

    def compute() -> stages.Writer:
        computed.append("work")
        return write("made")

    def adopt(fetched: Path) -> stages.Writer:
        return write((fetched / "x.txt").read_text())

    path = tmp_path / "cache" / "entry"
    assert stages.cached_entry(path, None, tracker, "entry", adopt, compute) == "computed"
    assert (path / "x.txt").read_text() == "made" and computed == ["work"]
    assert stages.cached_entry(path, None, tracker, "entry", adopt, compute) == "disk"
    with tracker.run("husai-test", "holder", {}) as run_id:
        tracker.log_artifacts(run_id, path, "entry")
    shutil.rmtree(path)
    assert stages.cached_entry(path, run_id, tracker, "entry", adopt, compute) == "mlflow"
    assert (path / "x.txt").read_text() == "made" and computed == ["work"]
    assert [p.name for p in path.parent.iterdir()] == ["entry"]  # no staging folder left
    shutil.rmtree(path)

    def fails() -> stages.Writer:
        raise RuntimeError("interrupted mid-compute")

    with pytest.raises(RuntimeError):
        stages.cached_entry(path, None, tracker, "entry", adopt, fails)
    assert list(path.parent.iterdir()) == []  # the work runs before any folder is made
    with pytest.raises(ValueError, match="nothing to compute it with"):
        stages.cached_entry(path, None, tracker, "entry", adopt)


def test_references_are_trained_once_then_reused(tracker: Tracker, tmp_path: Path) -> None:
    cfg = from_dict(
        {
            "name": "refs",
            "sae": {"architecture": "topk", "d_sae": 32, "k": 4},
            "train": {"steps": 30, "batch_size": 64, "lr_warmup_steps": 0, "lr_decay_steps": 0},
        }
    )
    acts = load_user_activations(user_acts(tmp_path), cfg.activations)
    first = stages.reference(cfg, acts, 100, tracker)
    assert not first.reused and first.decoder.shape == (32, 16)
    entry = tmp_path / "cache" / "references" / first.key  # the isolated cache (conftest)
    tag = tracker.get_run(first.run_id).tags[names.TAG_CONTENT_SHA256]
    assert tag == manifest_of(entry)
    again = stages.reference(cfg, acts, 100, tracker)
    assert again.reused and again.run_id == first.run_id
    assert torch.equal(again.decoder, first.decoder)
    other = stages.reference(cfg, acts, 101, tracker)
    assert other.key != first.key and not torch.equal(other.decoder, first.decoder)
    assert len(runs_of_kind(tracker, names.KIND_REFERENCE)) == 2


@pytest.mark.fresh_store
def test_the_pre_compute_check_fails_before_anything_exists(
    tiny_cfg: ExperimentConfig, isolated_store: str
) -> None:
    def with_batch(batch: int, **acts: object) -> ExperimentConfig:
        train = {"steps": 10, "batch_size": batch, "lr_warmup_steps": 0, "lr_decay_steps": 0}
        activations = {**tiny_cfg.activations.model_dump(), **acts}
        return from_dict({**tiny_cfg.model_dump(), "train": train, "activations": activations})

    # p = 11: 4 OOD pairs set apart, a quarter of the other 117 held out: 88 SAE-train rows.
    with pytest.raises(InputError, match="train.batch_size: 200 exceeds the 88 training rows"):
        stages.check_before_compute(with_batch(200))
    with pytest.raises(InputError, match="activations.hook"):
        stages.check_before_compute(with_batch(64, hook="blocks.5.hook_resid_post"))
    stages.check_before_compute(with_batch(88))
    assert not Path(isolated_store.removeprefix("sqlite:///")).exists()


@pytest.mark.slow
def test_quick_preset_generalises_then_is_reused(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.perf_counter()
    assert main(["extract", "--preset", "quick"]) == 0
    first_s = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "trained and registered" in out and "cache miss" in out

    tracker = Tracker(isolated_store)
    mv = tracker.client.get_model_version(names.BASE_MODEL_NAME, "1")
    assert mv.tags[names.TAG_GENERALISED] == "true"
    assert float(mv.tags[names.BASE_TEST_ACC]) >= 0.99
    run = tracker.client.get_run(mv.run_id)
    assert run.data.metrics[names.BASE_TEST_ACC] >= 0.99
    assert run.data.tags[names.TAG_OUTCOME] == "generalised"

    t0 = time.perf_counter()
    assert main(["extract", "--preset", "quick"]) == 0
    second_s = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "reused" in out and "cache hit" in out
    assert second_s < first_s / 3, (first_s, second_s)
    assert len(tracker.client.search_model_versions(f"name = '{names.BASE_MODEL_NAME}'")) == 1

    # A quick-preset trial (TopK k 16, d_sae 512, 3 seeds: the fewest that give every bound;
    # 200 steps, a third of the demo sweep's, to keep CI short) on the quick base model, every
    # eval on.
    cfg = tmp_path / "quick_trial.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "preset": "quick",
                "trial": {"seeds": [0, 1, 2]},
                "train": {"steps": 200, "lr_warmup_steps": 10, "lr_decay_steps": 40},
            }
        )
    )
    assert main(["trial", "--config", str(cfg), "--alias", "candidate"]) == 0
    out = capsys.readouterr().out
    assert "reused" in out and "cache hit" in out and "alias candidate -> husai-sae" in out
    assert "stress: transcoder pw_mcc" in out and "eval cost: transcoder" in out
    mv = tracker.client.get_model_version_by_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE)
    trial = tracker.client.get_run(mv.tags[names.TAG_TRIAL_RUN_ID])
    m = trial.data.metrics
    assert 0 < m[names.RECON_LOSS_RECOVERED] <= 1.0 + 1e-6
    assert m[names.RECON_EV] > 0.5
    assert trial.data.params["n_seeds"] == "3" and trial.data.params["k"] == "16"
    for base in names.STABILITY_BASES:
        for suffix in names.STABILITY_SUFFIXES:
            assert names.stability_key(base, suffix) in m
    # Every headline stress/* and external/* key, from this trial's SAEs.
    for key in names.HEADLINE_EVAL_KEYS:
        assert key in m, key
    assert not any(k.startswith(names.EVAL_SKIPPED_PREFIX) for k in trial.data.tags)
    assert not any(k.startswith(names.NULL_SKIPPED_PREFIX) for k in trial.data.tags)
