"""The documentation's reference pages, generated from the code so that they cannot drift:
every config field (from the pydantic models' descriptions), every `husai` command and option
(from the argparse parser), every `mlflow run` entry point (from MLproject) and every metric
key a trial records or a gate policy may name (from `husai.names`).

mkdocs builds them through `scripts/mkdocs_hooks.py` (they are never written into docs/);
print one with

    .venv/bin/python scripts/reference_pages.py reference/config.md
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
GENERATED = "<!-- Generated from the code by scripts/reference_pages.py: do not edit. -->\n\n"


def _type_name(t: Any) -> str:
    if isinstance(t, type) and issubclass(t, BaseModel):
        return t.__name__
    origin = typing.get_origin(t)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(t))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(t))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(t) if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(t, "__name__", str(t)).replace("NoneType", "None")


def _nested(t: Any) -> list[type[BaseModel]]:
    if isinstance(t, type) and issubclass(t, BaseModel):
        return [t]
    return [m for a in typing.get_args(t) for m in _nested(a)]


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(its fields' defaults)"
        return f"`{value!r}`"
    return f"`{field.default!r}`"


def model_table(model: type[BaseModel], prefix: str, seen: set[str]) -> list[str]:
    """One section per model: a row per field, nested models in sections of their own."""
    lines = [f"### `{prefix or model.__name__}`", ""]
    if model.__doc__ and model.__doc__ is not BaseModel.__doc__:
        lines += [" ".join(model.__doc__.split()), ""]
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        subs = _nested(field.annotation)
        desc = field.description or " ".join((subs[0].__doc__ or "").split()) if subs else ""
        desc = (field.description or desc).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        for sub in subs:
            nested.append((f"{prefix}.{key}" if prefix else key, sub))
    lines.append("")
    for path, sub in nested:
        if path not in seen:
            seen.add(path)
            lines += model_table(sub, path, seen)
    return lines


def config_page() -> str:
    from husai.config.experiment import ExperimentConfig
    from husai.config.sweep.spec import SweepConfig
    from husai.registry.gate import Policy

    out = [
        "# Config reference",
        "",
        GENERATED,
        "Every field of the three files HUSAI reads, with its type, default and description. "
        "Unknown fields are refused, naming the field. A dotted path (`sae.k`) is how sweep "
        "files and errors name a field.",
        "",
        "## Experiment configs (`configs/*.yaml`, presets, a sweep's `experiment:`)",
        "",
        *model_table(ExperimentConfig, "", set()),
        "## Sweep files (`sweeps/*.yaml`)",
        "",
        *model_table(SweepConfig, "", set()),
        "## Gate policies (`gates/*.yaml`)",
        "",
        *model_table(Policy, "", set()),
    ]
    return "\n".join(out) + "\n"


def _options(p: argparse.ArgumentParser) -> list[str]:
    rows = ["| option | default | help |", "|---|---|---|"]
    for a in p._actions:
        if isinstance(a, argparse._HelpAction | argparse._SubParsersAction):
            continue
        flags = ", ".join(f"`{f}`" for f in a.option_strings) or f"`{a.dest}`"
        default = "required" if a.required else f"`{a.default!r}`"
        rows.append(f"| {flags} | {default} | {(a.help or '').replace('|', '/')} |")
    return rows


def cli_page() -> str:
    from husai.cli_args import build_parser

    parser = build_parser()
    out = ["# Commands and entry points", "", GENERATED]
    out += [parser.description or "", "", "## `husai` commands", ""]
    out += ["`husai --version` prints the installed version.", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        out += [f"### `husai {name}`", "", p.description or "", "", *_options(p), ""]
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    out += [
        "## `mlflow run` entry points (MLproject)",
        "",
        "One entry point per command, with the same parameters, run from the project's folder "
        f"(environment: `{project.get('python_env') or project.get('conda_env')}`):",
        "",
        "| entry point | parameters (default) | command |",
        "|---|---|---|",
    ]
    for name, ep in project["entry_points"].items():
        params = ", ".join(
            f"`{k}` ({v.get('default', 'required')!r})" if isinstance(v, dict) else f"`{k}`"
            for k, v in (ep.get("parameters") or {}).items()
        )
        out.append(f"| `{name}` | {params} | `{ep['command']}` |")
    return "\n".join(out) + "\n"


def metric_keys_page() -> str:
    from husai import metric_version, names

    gateable = sorted(names.gateable_metrics())
    groups: dict[str, list[str]] = {}
    for key in gateable:
        groups.setdefault(key.split("/", 1)[0], []).append(key)
    out = [
        "# Metric keys",
        "",
        GENERATED,
        f"Every key a trial run records that a gate policy may name, at metric_version "
        f"{metric_version}, grouped by prefix. What each means is in the "
        "[metric definitions](../metrics.md). A policy may also name a null family "
        "(judged once per null the policy gates on): "
        + ", ".join(f"`{f}`" for f in sorted(names.null_families()))
        + ". The official harnesses' keys (`saebench/*`, `cebench/*`) are read from their "
        "own runs (`husai external`).",
        "",
    ]
    for prefix, keys in groups.items():
        out += [f"## `{prefix}/`", "", *(f"- `{k}`" for k in keys), ""]
    return "\n".join(out) + "\n"


PAGES = {
    "reference/config.md": config_page,
    "reference/cli.md": cli_page,
    "reference/metric-keys.md": metric_keys_page,
}


if __name__ == "__main__":
    print(PAGES[sys.argv[1]]() if len(sys.argv) > 1 else "\n".join(PAGES))
