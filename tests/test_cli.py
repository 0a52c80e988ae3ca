"""The `husai` CLI: bad input exits 2 with one line naming the field, and records nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from husai.cli import EXIT_BAD_INPUT, main
from tests.helpers import TINY


def store_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


@pytest.mark.fresh_store
@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("preset: quick\ntask: {trian_frac: 0.5}\n", "task.trian_frac"),
        ("preset: quick\ntask: {train_frac: 1.2}\n", "task.train_frac"),
        ("preset: quick\ntask: {p: 2}\n", "task.p"),
    ],
)
def test_bad_config_exits_2_naming_the_field_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_store: str, text: str, field: str
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert main(["train-base", "--config", str(cfg)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(cfg) in err[0] and field in err[0]
    assert not store_path(isolated_store).exists()  # no database, so certainly no run


@pytest.mark.fresh_store
def test_unknown_hook_exits_2_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_store: str
) -> None:
    cfg = tmp_path / "hook.yaml"
    cfg.write_text("preset: quick\nactivations: {hook: blocks.3.hook_resid_post}\n")
    assert main(["extract", "--config", str(cfg)]) == EXIT_BAD_INPUT
    assert "activations.hook" in capsys.readouterr().err
    assert not store_path(isolated_store).exists()


@pytest.mark.fresh_store
def test_real_process_exit_code(tmp_path: Path, isolated_store: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("task: {p: 1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "husai", "train-base", "--config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr.strip().count("\n") == 0 and "task.p" in proc.stderr
    assert not store_path(isolated_store).exists()


def test_extract_twice_trains_once_then_hits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_store: str
) -> None:
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["extract", "--config", str(cfg)]) == 0
    first = capsys.readouterr().out
    assert "trained and registered" in first and "cache miss" in first
    assert main(["extract", "--config", str(cfg)]) == 0
    second = capsys.readouterr().out
    assert "reused" in second and "cache hit (disk)" in second
    assert "mlflow ui --backend-store-uri sqlite:///" in second
    from husai.registry.tracking import Tracker

    acts_exp = Tracker(isolated_store).find_experiment_id("husai-activations")
    assert f"#/experiments/{acts_exp}?workflowType=machine_learning" in second


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import husai

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"husai {husai.__version__}"
    from importlib.metadata import version

    assert husai.__version__ == version("husai")  # the package and its metadata agree
