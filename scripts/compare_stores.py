"""Two MLflow stores made by the same commands, compared as wholes: every run (by experiment,
name and kind), its params, metrics and status, and every registered model version with its
aliases and tags. What legitimately differs is normalised first: ids, times, paths, the git
commit, and (given `--rename OLD=NEW`) renamed key prefixes and the metric version.

    .venv/bin/python scripts/compare_stores.py sqlite:///a.db sqlite:///b.db \
        --rename external/=local/ --rename external.=local.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

from mlflow.tracking import MlflowClient

VOLATILE_TAGS = re.compile(
    r"^(mlflow\.(source|user|log-model|runName|parentRunId|databricks)|husai\.(git_sha|driver|"
    r"ray_|claim|pkg\.|metric_version|started|node|activation_run|controls_run|sweep_run|"
    r"trial_run|external_run|confirms|gate_run|base_run|decided|device))"
)
# Content keys and checksums that embed a run id (an activation set's key names its base
# model's run; its file's checksum covers that key in the file's header; a reference's key
# names its set): they differ between any two stores. Compare the rows themselves separately.
VOLATILE_PARAMS = re.compile(r"(run_id|path|file|_dir|ray_name|uri|activation_key|ref_key)$")
VOLATILE_SHA = re.compile(r"^husai\.(content|activations)_sha256$")
VOLATILE_METRICS = re.compile(r"(seconds|^system/|_mib$|peak)")
ID = re.compile(r"\b[0-9a-f]{32}\b")
KEY_IN_NAME = re.compile(r"-[0-9a-f]{8}$")


def _renamed(key: str, renames: list[tuple[str, str]]) -> str:
    for old, new in renames:
        key = key.replace(old, new)
    return key


def _value(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else float(f"{v:.6g}")
    return ID.sub("<id>", str(v))


def snapshot(uri: str, renames: list[tuple[str, str]]) -> dict[str, Any]:
    c = MlflowClient(uri)
    runs: dict[str, Any] = {}
    for exp in c.search_experiments():
        for r in c.search_runs([exp.experiment_id], max_results=5000):
            t = r.data.tags
            name = KEY_IN_NAME.sub("-<key>", r.info.run_name or "")  # acts-<hook>-<key prefix>
            key = "|".join([exp.name, name, t.get("husai.kind", ""), t.get("husai.seed", "")])
            params = {
                _renamed(k, renames): _value(v)
                for k, v in r.data.params.items()
                if not VOLATILE_PARAMS.search(k)
            }
            metrics = {
                _renamed(k, renames): _value(v)
                for k, v in r.data.metrics.items()
                if not VOLATILE_METRICS.search(k)
            }
            tags = {
                _renamed(k, renames): _renamed(_value(v), renames)
                for k, v in t.items()
                if not VOLATILE_TAGS.match(k) and not VOLATILE_SHA.match(k)
            }
            n = 0
            while f"{key}#{n}" in runs:
                n += 1
            runs[f"{key}#{n}"] = {
                "status": r.info.status,
                "params": params,
                "metrics": metrics,
                "tags": tags,
            }
    versions: dict[str, Any] = {}
    for m in c.search_registered_models():
        for v in c.search_model_versions(f"name = '{m.name}'"):
            full = c.get_model_version(m.name, v.version)
            versions[f"{m.name}/{v.version}"] = {
                "aliases": sorted(full.aliases),
                "tags": {
                    _renamed(k, renames): _renamed(_value(x), renames)
                    for k, x in full.tags.items()
                    if not VOLATILE_TAGS.match(k)
                },
            }
    return {"runs": runs, "versions": versions}


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a:
                out.append(f"+ {path}/{k}")
            elif k not in b:
                out.append(f"- {path}/{k}")
            else:
                out += diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, float) and isinstance(b, float):
        same = math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)
        return [] if same else [f"~ {path}: {a} != {b}"]
    return [] if a == b else [f"~ {path}: {a!r} != {b!r}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rename", action="append", default=[], help="OLD=NEW in keys and tags")
    args = ap.parse_args()
    renames = [tuple(r.split("=", 1)) for r in args.rename]
    a, b = snapshot(args.before, renames), snapshot(args.after, [])  # type: ignore[arg-type]
    out = diff(a, b)
    print(
        f"runs {len(a['runs'])} vs {len(b['runs'])}; versions {len(a['versions'])} vs "
        f"{len(b['versions'])}; differences: {len(out)}"
    )
    print("\n".join(out[:200]))
    print(json.dumps({"differences": len(out)}))


if __name__ == "__main__":
    main()
