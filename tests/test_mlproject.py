"""MLproject has one entry point per CLI subcommand, with the same parameters and types; run
for real, the runs `mlflow run` creates link to HUSAI's own records."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from husai import names
from husai.cli import build_parser, main
from husai.registry import provenance
from husai.registry.tracking import Tracker
from tests.helpers import ROOT, TINY, user_acts, write_cfg

MLPROJECT_TYPE = {str: "string", float: "float", int: "float"}  # MLflow has no int type


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions if a.option_strings and a.dest != "help"}


def test_entry_points_match_cli() -> None:
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    eps, cmds = spec["entry_points"], subcommands()
    # `main` (what a bare `mlflow run .` runs) is the pipeline; every other name is a command.
    assert set(eps) == (set(cmds) - {"pipeline"}) | {"main"}
    for name, ep in eps.items():
        name = "pipeline" if name == "main" else name
        opts = options(cmds[name])
        params = ep.get("parameters", {})
        assert set(params) == set(opts), name
        for pname, pspec in params.items():
            action = opts[pname]
            assert pspec["type"] == MLPROJECT_TYPE[action.type or str], (name, pname)
            assert str(pspec.get("default")) == str(action.default), (name, pname)
            flag = "--" + pname.replace("_", "-")
            assert flag in action.option_strings
            assert re.search(rf"{flag} \{{{pname}\}}", ep["command"]), (name, pname)
        assert ep["command"].startswith(f"python -m husai {name} ")


def test_python_env_is_mlflows_and_pins_what_pyproject_pins() -> None:
    """MLproject names python_env.yaml (MLflow's current format), MLflow's own project loader
    reads it, and it pins every version pyproject.toml pins, torch first as the CPU-safe
    2.13.0, the project itself installed from its folder."""
    from mlflow.projects._project_spec import load_project
    from mlflow.utils.environment import _PythonEnv

    project = load_project(str(ROOT))
    assert project.env_type == "python_env" and project.env_config_path == str(
        ROOT / "python_env.yaml"
    )
    env = _PythonEnv.from_yaml(project.env_config_path)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {d for d in deps["dependencies"] if "==" in d}
    assert pinned <= set(env.dependencies)
    assert "torch==2.13.0" in env.build_dependencies and "." in env.dependencies
    assert deps["requires-python"] == f">={env.python}"
    assert not (ROOT / "conda.yaml").exists()


@pytest.mark.slow
def test_mlflow_run_entry_points(
    tmp_path: Path, isolated_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlflow run . -e train-base` for real (one entry point: every other one's parameters
    and command are checked against the CLI above); then `extract` as `mlflow run` starts it,
    in-process, with MLFLOW_RUN_ID naming the launcher's run."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    # `--env-manager local` runs the entry point's `python` from PATH, as an activated venv does.
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": isolated_store,
        "PATH": f"{bindir}:{os.environ['PATH']}",
    }
    tracker = Tracker(isolated_store)
    tracker.experiment_id(names.EXPERIMENT_BASE)  # the driver creates the db
    run = [mlflow_bin, "run", str(ROOT), "-e", "train-base", "--env-manager", "local"]
    proc = subprocess.run(
        [*run, "--experiment-name", names.EXPERIMENT_BASE, "-P", f"config={cfg}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    mv = tracker.client.get_model_version(names.BASE_MODEL_NAME, "1")
    base_run = tracker.client.get_run(mv.run_id)
    assert base_run.data.tags[names.TAG_CONFIG_HASH] and base_run.info.status == "FINISHED"
    # The run `mlflow run` created carries links to the runs HUSAI made in its own experiments.
    (launched,) = [
        r
        for r in tracker.client.search_runs(
            [tracker.client.get_experiment_by_name(names.EXPERIMENT_BASE).experiment_id]
        )
        if "mlflow.project.entryPoint" in r.data.tags
    ]
    assert launched.data.tags["mlflow.project.entryPoint"] == "train-base"
    assert launched.info.status == "FINISHED"
    assert launched.data.tags[names.TAG_LINK_BASE_RUN] == mv.run_id
    assert launched.data.tags[names.TAG_LINK_BASE_VERSION] == "1"

    launcher = tracker.client.create_run(tracker.experiment_id(names.EXPERIMENT_ACTIVATIONS))
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", isolated_store)
    assert main(["extract", "--config", str(cfg)]) == 0
    tags = tracker.client.get_run(launcher.info.run_id).data.tags
    acts_run = tracker.client.get_run(tags[names.TAG_LINK_ACTIVATIONS_RUN])
    assert acts_run.data.params[names.PARAM_BASE_VERSION] == "1"  # the base model reused
    assert acts_run.data.tags[names.TAG_KIND] == names.KIND_ACTIVATIONS


@pytest.mark.slow
def test_a_bare_mlflow_run_finds_what_husai_registered(
    tmp_path: Path, isolated_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing set, HUSAI's store is the one MLflow itself opens: after a HUSAI command
    registered `candidate`, `mlflow run . -e gate` started in the project's folder finds it.
    (HUSAI's default used to be mlruns/mlflow.db, and the bare `mlflow run` made an empty
    ./mlflow.db and failed with "husai-sae has no alias 'candidate'".) The project here is a
    copy of MLproject and python_env.yaml in a folder of its own, so the repository's store is
    never touched."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("MLproject", "python_env.yaml"):
        shutil.copy(ROOT / name, project / name)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setattr(provenance, "project_root", lambda: project)
    monkeypatch.chdir(project)
    argv = ["trial", "--config", str(write_cfg(tmp_path)), "--activations-file"]
    assert main([*argv, str(user_acts(tmp_path)), "--alias", "candidate"]) == 0
    assert (project / "mlflow.db").exists() and not (project / "mlruns" / "mlflow.db").exists()

    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{bindir}:{os.environ['PATH']}"
    proc = subprocess.run(
        [
            *(str(Path(bindir) / "mlflow"), "run", ".", "-e", "gate", "--env-manager", "local"),
            *("-P", "alias=candidate", "-P", "dry_run=yes"),
            *("-P", f"policy={ROOT / 'gates' / 'default.yaml'}"),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    printed = proc.stdout + proc.stderr
    assert "has no alias" not in printed, printed[-3000:]
    assert "gate default on husai-sae version 1" in printed, printed[-3000:]
    assert "dry run: nothing recorded" in printed
