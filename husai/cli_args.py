"""The `husai` command line: every subcommand's options (`build_parser`), kept apart from what
the commands do (`husai.cli`). MLproject has one entry point per subcommand with the same
parameters; tests/test_mlproject.py checks the two against each other.
"""

from __future__ import annotations

import argparse

import husai
from husai.config.loading import PRESETS

DESCRIPTION = "HUSAI: are sparse autoencoder features reproducible across seeds?"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=str,
        default="",
        help="experiment YAML, merged over --preset (its own `preset:` wins)",
    )
    p.add_argument(
        "--preset",
        type=str,
        default="",
        help=f"shipped experiment preset ({', '.join(PRESETS)}): the base of --config, or the "
        "whole experiment without one (default: quick)",
    )
    p.add_argument(
        "--tracking-uri",
        type=str,
        default="",
        help="MLflow store; default $MLFLOW_TRACKING_URI or sqlite:///<project>/mlflow.db",
    )


def _yes_no(p: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """A switch that takes a value (no/yes), so MLproject can pass it as a typed parameter."""
    p.add_argument(flag, type=str, default="no", choices=("no", "yes"), help=help_text)


def _trial_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--activation-key",
        type=str,
        default="",
        help="train on a cached activation set by its key (sets activations.key)",
    )
    p.add_argument(
        "--activations-file",
        type=str,
        default="",
        help="your own [n, d_in] activations: .safetensors, .npy or .pt (sets activations.file)",
    )
    _yes_no(
        p, "--rerun", "train again even if this exact trial (config hash + activations) is recorded"
    )
    _allow_memorised(p)
    p.add_argument(
        "--alias",
        type=str,
        default="",
        help="move this husai-sae alias (e.g. candidate) to the trial's registered SAE; by "
        "default a trial moves none (sweeps and the pipeline move candidate)",
    )


def _allow_memorised(p: argparse.ArgumentParser) -> None:
    _yes_no(p, "--allow-memorised", "go on with a base model that did not generalise")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="husai", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"husai {husai.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMAND_HELP.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "sweep":
            _sweep_options(p)
            _allow_memorised(p)
            continue
        if name == "gate":
            _gate_options(p)
            continue
        if name == "pipeline":
            _sweep_options(p, resume=False)
            p.add_argument("--policy", type=str, default="gates/default.yaml", help="gate policy")
            _allow_memorised(p)
            continue
        if name == "report":
            p.add_argument("--sweep-run", type=str, required=True, help="sweep run id")
            p.add_argument("--tracking-uri", type=str, default="", help="MLflow store")
            continue
        if name == "export":
            p.add_argument("--version", type=str, required=True, help="husai-sae version number")
            p.add_argument("--out", type=str, required=True, help="new folder to write")
            p.add_argument("--tracking-uri", type=str, default="", help="MLflow store")
            continue
        if name == "external":
            _external_options(p)
            continue
        _common(p)
        if name == "trial":
            _trial_options(p)
    return parser


EXTERNAL_OPTIONS = (  # flag, default, help (husai.run.external says what each is for)
    ("--harness", "saebench", "saebench or cebench"),
    ("--model", "", "the language model the harness runs (in your Hugging Face cache)"),
    ("--evals", "core", "SAEBench evals, comma-separated (e.g. core,sparse_probing)"),
    ("--python", "", "the Python of the harness's environment (default: this one)"),
    ("--harness-path", "", "CE-Bench: its checkout"),
    ("--dataset", "", "CE-Bench: its contrastive stories (save_to_disk folder or Hub name)"),
    ("--device", "cpu", "where the harness runs (cpu, cuda, cuda:N)"),
    ("--dtype", "float32", "the harness's model dtype"),
    ("--tracking-uri", "", "MLflow store"),
)


def _external_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", type=str, required=True, help="husai-sae version number")
    for flag, default, help_text in EXTERNAL_OPTIONS:
        p.add_argument(flag, type=str, default=default, help=help_text)
    p.add_argument("--batch-size", type=int, default=64, help="the harness's LLM batch size")


def _sweep_options(p: argparse.ArgumentParser, resume: bool = True) -> None:
    p.add_argument("--sweep", type=str, default="sweeps/quick.yaml", help="sweep file")
    _yes_no(p, "--smoke", "tiny run (the sweep file's smoke section)")
    p.add_argument(
        "--tracking-uri", type=str, default="", help="MLflow store (as for the other commands)"
    )
    if resume:
        _yes_no(
            p,
            "--resume",
            "continue the newest interrupted sweep of this file (keeps finished trials)",
        )
        _yes_no(p, "--rerun", "run again even if this exact sweep (file + activations) finished")
    p.add_argument(
        "--ray-address",
        type=str,
        default="",
        help="existing Ray cluster (default $RAY_ADDRESS, else a private local instance)",
    )


COMMAND_HELP = {
    "train-base": "train the modular-addition transformer, or reuse the registered one",
    "extract": "cache and log the base model's activations (trains the base model if needed)",
    "trial": "train one SAE recipe with several seeds; held-out metrics and cross-seed stability",
    "sweep": "Ray Tune + Optuna over a sweep file; trials nested under one sweep run",
    "pipeline": "base model -> activations -> sweep -> report -> gate, with a summary",
    "report": "plots, trials table and an HTML page for a sweep run, logged to it",
    "gate": "judge a husai-sae version by a policy: promote to champion or block, with reasons",
    "export": "write a husai-sae version as a plain sae-lens folder (for SAEBench, CE-Bench)",
    "external": "run the official SAEBench or CE-Bench harness on a husai-sae version; log it",
}


def _gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", type=str, default="gates/default.yaml", help="gate policy file")
    p.add_argument("--version", type=str, default="", help="husai-sae version number")
    p.add_argument("--alias", type=str, default="", help="or the version an alias points at")
    _yes_no(p, "--dry-run", "evaluate and print only: no tags, no gate run, no alias")
    p.add_argument("--tracking-uri", type=str, default="", help="MLflow store")
