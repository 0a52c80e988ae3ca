"""MLproject has one entry point per CLI subcommand, with the same parameters and types."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from husai.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
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


def test_conda_env_pins_match_pyproject() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {d for d in deps if "==" in d}
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pinned <= set(pip)
    assert "torch==2.13.0" in pip
