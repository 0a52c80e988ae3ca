"""Bad input is refused before any compute, in one line naming the file and field, with exit
code 2 and nothing written: no MLflow store, no run, no Ray (issue: "every bad input is refused
before compute"). Each case here passed validation once and failed later, or was silently
accepted as something else."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from husai import names
from husai.cli import EXIT_BAD_INPUT, main
from husai.config.loading import load, resolve
from husai.core.errors import ConfigError
from husai.registry.tracking import Tracker
from tests.helpers import ROOT, free_port, store_path, write_cfg

GATE = ["gate", "--policy", str(ROOT / "gates" / "default.yaml"), "--alias", "candidate"]
SWEEP_HEAD = "name: s\nexperiment: {preset: quick}\nobjective: [{metric: recon/fvu, mode: min}]\n"


@pytest.mark.fresh_store
@pytest.mark.parametrize(
    ("space", "says"),
    [
        (
            "{sae.architecture: {type: categorical, choices: [topk, nope]}}",
            "search_space.sae.architecture = 'nope': sae.architecture: Input should be",
        ),
        ("{train.lr: {type: uniform, low: -0.1, high: 0.1}}", "train.lr = -0.1: train.lr"),
        ("{sae.k: {type: int, low: 0, high: 8}}", "sae.k = 0: sae.k: Input should be greater"),
        ("{sae.k: {type: categorical, choices: [a, b]}}", "sae.k = 'a': sae.k: Input should be"),
        ("{sae.k: {type: uniform, low: 2, high: 8}}", "sae.k is an integer; use type: int"),
        ("{}", "search_space: give at least one dimension"),
    ],
)
def test_every_point_of_a_sweep_space_is_validated_at_load(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str], space: str, says: str
) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP_HEAD + f"search_space: {space}\n")
    assert main(["sweep", "--sweep", str(sweep)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert says in err and str(sweep) in err and len(err.splitlines()) == 1, err
    assert not store_path(isolated_store).exists()  # no store, so no run (and Ray never started)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("sae: {k: true}", "sae.k: expected a number, got true"),
        ("train: {lr: .inf}", "train.lr: Input should be a finite number"),
        ("activations: {ood_frac: .nan}", "activations.ood_frac: Input should be a finite number"),
        ("sae: {k: 8}\nsae: {k: 64}", "duplicate key 'sae'"),
        ("sae: {k: 8, k: 64}", "duplicate key 'k'"),
        ('activations: {key: "../../mlruns"}', "activations.key: String should match pattern"),
    ],
)
def test_config_values_that_used_to_pass_are_refused(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert says in str(e.value) and str(path) in str(e.value)


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"c\.yaml: config is not UTF-8 text"):
        load(path)


def test_preset_merge_with_empty_and_partial_files(tmp_path: Path) -> None:
    """--preset is the base of --config: an empty file is the preset itself, a partial one
    overrides only what it names, and a file naming its own preset wins."""
    quick = resolve(None, "quick")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert resolve(empty, "quick") == quick
    assert resolve(empty, "quick").task.p == 59 and resolve(empty, None).task.p == 113
    partial = tmp_path / "partial.yaml"
    partial.write_text("task: {data_seed: 1}\n")
    got = resolve(partial, "quick")
    assert got.task.data_seed == 1 and got.base == quick.base and got.task.p == quick.task.p
    own = tmp_path / "own.yaml"
    own.write_text("preset: paper\n")
    assert resolve(own, "quick") == resolve(None, "paper")


@pytest.mark.fresh_store
def test_an_empty_config_with_preset_quick_is_the_quick_preset_on_the_cli(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`husai trial --config empty.yaml --preset quick` trained the default (p 113, 30,000 steps)
    model before. A k the quick preset's d_sae cannot hold shows which experiment it read,
    refused before anything is created."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sae": {"k": 600}}))
    assert main(["trial", "--config", str(path), "--preset", "quick"]) == EXIT_BAD_INPUT
    assert "k: 600 exceeds d_sae 512" in capsys.readouterr().err
    assert not store_path(isolated_store).exists()


@pytest.mark.fresh_store
def test_shapes_that_cannot_fit_in_memory_are_refused_before_training(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(tmp_path, {"sae": {"architecture": "topk", "d_sae": 200_000_000, "k": 4}})
    assert main(["trial", "--config", str(cfg), "--preset", "quick"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "sae.d_sae: 200000000 latents" in err and "GiB" in err and len(err.splitlines()) == 1
    assert not store_path(isolated_store).exists()


@pytest.mark.fresh_store
def test_activations_that_overflow_float32_are_refused(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.npy"
    rows = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    rows[3, 2] = 3e38
    np.save(path, rows)
    cfg = write_cfg(tmp_path)
    assert main(["trial", "--config", str(cfg), "--activations-file", str(path)]) == (
        EXIT_BAD_INPUT
    )
    assert "activations reach 3e+38" in capsys.readouterr().err
    assert not store_path(isolated_store).exists()


@pytest.mark.fresh_store
@pytest.mark.parametrize("which", ["all", "held-out"])
def test_rows_with_no_variance_are_refused_before_training(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    """Identical rows (or identical held-out rows: FVU divides by their variance) trained and
    then crashed in the metrics; now one line naming the file, before any run."""
    rows = np.ones((200, 8), dtype="float32")
    if which == "held-out":  # vary only the SAE-train side of the default split
        from husai.config.experiment import ActivationsConfig
        from husai.model.activations import split_indices

        a = ActivationsConfig()
        train, _ = split_indices(200, 1.0 - a.eval_frac, a.split_seed)
        rows[train.numpy()] = np.random.default_rng(0).normal(size=(len(train), 8))
    path = tmp_path / "flat.npy"
    np.save(path, rows)
    cfg = write_cfg(tmp_path)
    code = main(["trial", "--config", str(cfg), "--activations-file", str(path)])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    side = "SAE-train" if which == "all" else "held-out"
    assert f"{path}: the {side} rows" in err and "no variance" in err and "\n" not in err
    assert not store_path(isolated_store).exists()


def test_an_unusable_tracking_uri_is_one_line(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker}/x.db"
    cfg = write_cfg(tmp_path)
    acts = tmp_path / "acts.npy"
    np.save(acts, np.random.default_rng(0).normal(size=(256, 8)).astype("float32"))
    code = main(
        ["trial", "--config", str(cfg), "--activations-file", str(acts), "--tracking-uri", uri]
    )
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert f"tracking URI {uri}: cannot create {blocker}" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("uri", ["foo://bar", "file:///tmp/store", "/tmp/a/folder"])
def test_a_tracking_uri_mlflow_cannot_open_is_one_line_before_any_compute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], uri: str
) -> None:
    """MLflow's own error for an unknown scheme is a 42-line traceback from its registry."""
    acts = tmp_path / "acts.npy"
    np.save(acts, np.random.default_rng(0).normal(size=(256, 8)).astype("float32"))
    argv = ["trial", "--config", str(write_cfg(tmp_path)), "--activations-file", str(acts)]
    assert main([*argv, "--tracking-uri", uri]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert f"tracking URI {uri}:" in err and len(err.splitlines()) == 1
    assert "unknown scheme 'foo'" in err if uri.startswith("foo") else "file store" in err
    # The gate's own exit code 2 means "blocked": a store it cannot open is 1, as ever.
    assert main([*GATE, "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err.strip()
    assert f"tracking URI {uri}:" in err and len(err.splitlines()) == 1


def test_an_unreachable_tracking_server_is_one_line_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """MLflow's client retries an unreachable server with back-off for minutes (a gate was
    still waiting after 240 s): every command checks the server answers first."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("HUSAI_TRACKING_CONNECT_TIMEOUT_S", "2")
    start = time.monotonic()
    assert main([*GATE, "--tracking-uri", uri]) == 1
    took = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    assert f"tracking server {uri} did not answer within 2 s" in err and "mlflow server" in err
    assert len(err.splitlines()) == 1 and took < 10, took
    monkeypatch.setenv("HUSAI_TRACKING_CONNECT_TIMEOUT_S", "soon")
    assert main([*GATE, "--tracking-uri", uri]) == 1
    assert "HUSAI_TRACKING_CONNECT_TIMEOUT_S: expected a positive number" in capsys.readouterr().err


def test_experiments_open_on_their_runs_in_the_mlflow_ui(tracker: Tracker) -> None:
    """MLflow 3 opens an experiment without `mlflow.experimentKind` on its GenAI overview;
    every HUSAI experiment is tagged as model development, also one made before the tag."""
    exp = tracker.client.get_experiment(tracker.experiment_id("husai/ui"))
    assert exp.tags[names.MLFLOW_EXPERIMENT_KIND] == names.EXPERIMENT_KIND_MODEL_DEVELOPMENT
    old = tracker.client.create_experiment("husai/old")
    assert names.MLFLOW_EXPERIMENT_KIND not in tracker.client.get_experiment(old).tags
    assert tracker.experiment_id("husai/old") == old
    tags = tracker.client.get_experiment(old).tags
    assert tags[names.MLFLOW_EXPERIMENT_KIND] == names.EXPERIMENT_KIND_MODEL_DEVELOPMENT
