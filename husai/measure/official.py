"""The official harnesses' output files, read into metrics (`husai external`).

SAEBench writes one JSON per eval and SAE, `<name>_custom_sae_eval_results.json`, with
`eval_type_id` and `eval_result_metrics` = {category: {metric: value}}; each finite number
becomes `saebench/<eval_type_id>/<category>/<metric>`. CE-Bench writes one `results.json` with
its means at the top level (`contrastive_score_mean`, `independent_score_mean`,
`interpretability_score_mean`, `total_rows`); each becomes `cebench/<field>`. A value that is
not a finite number (None where an eval could not compute it, a list, text) is left out and
named in `skipped`, never logged as 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from husai import names
from husai.core.errors import InputError

# Where each harness writes under its working folder.
OUTPUT_GLOBS = {
    names.HARNESS_SAEBENCH: "eval_results/**/*_eval_results.json",
    names.HARNESS_CEBENCH: "interpretability_eval/**/results.json",
}


class HarnessOutputError(InputError):
    """A harness's output that is missing or not in its documented format (names the file)."""


@dataclass(frozen=True)
class OfficialResults:
    metrics: dict[str, float]
    files: list[Path]  # the output files read, relative to the working folder
    skipped: list[str] = field(default_factory=list)  # keys with no finite number
    eval_type_ids: list[str] = field(default_factory=list)  # SAEBench's, in file order


def read_results(harness: str, folder: Path, evals: tuple[str, ...] = ()) -> OfficialResults:
    """Every output file the harness wrote under `folder`, as metrics. `evals`: the SAEBench
    evals asked for; each must have written its file (SAEBench skips some with only a line
    printed, e.g. autointerp without an API key)."""
    files = sorted(folder.glob(OUTPUT_GLOBS[harness]))
    if not files:
        raise HarnessOutputError(
            f"{harness} wrote no results under {folder} (looked for {OUTPUT_GLOBS[harness]})"
        )
    # SAEBench writes each eval under eval_results/<eval>/ (scr and tpp: eval_results/scr, /tpp).
    wrote = {f.relative_to(folder).parts[1] for f in files}
    if missing := [e for e in evals if e not in wrote]:
        raise HarnessOutputError(f"{harness} wrote no result for {', '.join(missing)}")
    metrics: dict[str, float] = {}
    skipped: list[str] = []
    ids: list[str] = []
    for f in files:
        data = _json(f)
        if harness == names.HARNESS_SAEBENCH:
            pairs = _saebench(f, data)
            ids.append(str(data["eval_type_id"]))
        else:
            pairs = _flat(data, (), leave_out=("sae_config",))
        for parts, value in pairs:
            key = names.official_key(harness, *parts)
            if _finite(value):
                metrics[key] = float(value)
            else:
                skipped.append(key)
    return OfficialResults(metrics, [f.relative_to(folder) for f in files], skipped, ids)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HarnessOutputError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise HarnessOutputError(f"{path}: expected a JSON object")
    return data


def _saebench(path: Path, data: dict[str, Any]) -> list[tuple[tuple[str, ...], Any]]:
    eval_id, metrics = data.get("eval_type_id"), data.get("eval_result_metrics")
    if not isinstance(eval_id, str) or not eval_id or not isinstance(metrics, dict):
        raise HarnessOutputError(
            f"{path}: not a SAEBench result (needs eval_type_id and eval_result_metrics)"
        )
    return _flat(metrics, (eval_id,))


def _flat(
    data: dict[str, Any], prefix: tuple[str, ...], leave_out: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    for k, v in data.items():
        if k in leave_out:
            continue
        if isinstance(v, dict):
            out += _flat(v, (*prefix, str(k)))
        elif not isinstance(v, str):  # text fields (dataset names, dates) are not metrics
            out.append(((*prefix, str(k)), v))
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
