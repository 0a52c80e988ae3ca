"""Reliability, counted: bad inputs refused before compute, faults survived, duplicates under
concurrency. Every case runs the real CLI or stage against its own temporary MLflow store.

- Bad inputs: each config, sweep file or flag below goes to `husai.cli.main`; refused before
  compute means exit 2, one line on stderr, and no MLflow database created (so no run).
- Faults: a changed cache entry (values altered, same shapes), a truncated one, NaN rows, a
  stale staging folder, `--resume` against a sweep whose driver is alive.
- Concurrency: 4 identical `husai trial` processes started at once on a new store; a duplicate
  is any trial run, base model or activation set beyond the first.

    .venv/bin/python benchmarks/reliability.py
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "name": "rel",
    "task": {"p": 11, "train_frac": 0.5},
    "base": {"d_model": 16, "n_heads": 2, "d_mlp": 32, "max_steps": 6, "eval_every": 2},
    "activations": {"eval_frac": 0.25},
    "sae": {"architecture": "topk", "d_sae": 32, "k": 4},
    "train": {"steps": 40, "batch_size": 64, "lr_warmup_steps": 5, "lr_decay_steps": 10},
    "trial": {"seeds": [0, 1, 2]},
    "evals": {"transcoder": False},
}
SWEEP_HEAD = "name: s\nexperiment: {preset: quick}\nobjective: [{metric: recon/fvu, mode: min}]\n"
CONFIGS = [  # (what, config text)
    ("k: true", "sae: {k: true}"),
    ("lr = inf", "train: {lr: .inf}"),
    ("ood_frac = nan", "activations: {ood_frac: .nan}"),
    ("duplicate section", "sae: {k: 8}\nsae: {k: 64}"),
    ("duplicate key", "sae: {k: 8, k: 64}"),
    ("key with ../", 'activations: {key: "../../mlruns"}'),
    ("k > d_sae", "sae: {k: 600, d_sae: 512}"),
    ("unknown architecture", "sae: {architecture: nope}"),
    ("unknown field", "sae: {d_sea: 512}"),
    ("p not prime", "task: {p: 60}"),
    ("train share 1.5", "task: {train_frac: 1.5}"),
    ("unknown hook", "activations: {hook: blocks.7.hook_resid_post}"),
    ("batch > rows", "train: {batch_size: 100000}"),
    ("d_sae beyond memory", "sae: {architecture: topk, d_sae: 200000000, k: 4}"),
    ("one seed", "trial: {seeds: [0]}"),
    ("cuda without a GPU", "runtime: {device: cuda}"),
    ("malformed YAML", "sae: {k: 8"),
    ("not a mapping", "- a\n- b"),
]
SPACES = [
    (
        "architecture choice 'nope'",
        "{sae.architecture: {type: categorical, choices: [topk, nope]}}",
    ),
    ("negative lr", "{train.lr: {type: uniform, low: -0.1, high: 0.1}}"),
    ("k < 1", "{sae.k: {type: int, low: 0, high: 8}}"),
    ("text for an integer", "{sae.k: {type: categorical, choices: [a, b]}}"),
    ("float range on k", "{sae.k: {type: uniform, low: 2, high: 8}}"),
    ("empty space", "{}"),
]


def _cli(argv: list[str], folder: Path) -> tuple[int, str, int]:
    """(exit code, stderr, runs written) of one CLI call in a fresh store."""
    from husai.cli import main

    db = folder / "store" / "mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    os.environ["HUSAI_CACHE_DIR"] = str(folder / "cache")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    runs = 0
    if db.exists():  # count what a refused command left behind, if anything
        from husai.registry.tracking import Tracker

        client = Tracker(f"sqlite:///{db}").client
        exps = [e.experiment_id for e in client.search_experiments()]
        runs = len(client.search_runs(exps)) if exps else 0
    return code, err.getvalue().strip(), runs


def bad_inputs(tmp: Path) -> list[tuple[str, bool, int]]:
    """(what, refused before compute, runs written) per bad input."""
    out = []
    cases = [(w, ["trial", "--config"], t, "c.yaml") for w, t in CONFIGS]
    cases += [
        (w, ["sweep", "--sweep"], SWEEP_HEAD + f"search_space: {s}\n", "s.yaml") for w, s in SPACES
    ]
    cases.append(("non-UTF-8 config", ["trial", "--config"], None, "c.yaml"))
    for i, (what, argv, text, name) in enumerate(cases):
        folder = tmp / f"bad{i}"
        folder.mkdir()
        path = folder / name
        if text is None:
            path.write_bytes(b"sae: {k: \xff\xfe}\n")
        else:
            path.write_text(text if name == "s.yaml" else f"preset: quick\n{text}\n")
        code, err, runs = _cli([*argv, str(path)], folder)
        made_db = (folder / "store" / "mlflow.db").exists()
        refused = code == 2 and len(err.splitlines()) == 1 and not made_db
        out.append((what, refused, runs))
    return out


def faults(tmp: Path) -> list[tuple[str, bool]]:
    """(fault, survived) per injected fault."""
    from safetensors.torch import load_file, save_file

    from husai.config.loading import from_dict
    from husai.core.cache import publish_dir, remove_stale_staging
    from husai.core.errors import InputError
    from husai.registry.tracking import Tracker
    from husai.registry.views import RunView
    from husai.run import stages
    from husai.run.sweep_driver import refuse_if_alive

    os.environ["HUSAI_CACHE_DIR"] = str(tmp / "fault-cache")
    tracker = Tracker(f"sqlite:///{tmp}/faults.db")
    cfg = from_dict({k: v for k, v in TINY.items() if k in ("name", "task", "base", "activations")})
    out = []
    with contextlib.redirect_stdout(io.StringIO()):
        base = stages.base_model(cfg, tracker, progress=False)
        clean = stages.activations(cfg, base, tracker)
        file = clean.path / "acts.safetensors"
        t = load_file(str(file))
        t["train"] = t["train"] * 0.5
        save_file(t, str(file))
        again = stages.activations(cfg, base, tracker)
        out.append(
            (
                "cache values altered, same shapes",
                bool((again.acts.train == clean.acts.train).all()),
            )
        )
        file.write_bytes(file.read_bytes()[:100])
        again = stages.activations(cfg, base, tracker)
        out.append(("cache file truncated", bool((again.acts.train == clean.acts.train).all())))
        t = load_file(str(file))
        t["train"][0, 0] = float("nan")
        save_file(t, str(file))
        (clean.path / ".husai-sha256").unlink()  # as an entry from before checksums would be
        again = stages.activations(cfg, base, tracker)
        out.append(
            ("NaN rows in an unchecked entry", bool((again.acts.train == clean.acts.train).all()))
        )
    stale = tmp / "fault-cache" / "activations" / ".dead-entry-x"
    stale.mkdir()
    old = time.time() - 3600
    os.utime(stale, (old, old))
    publish_dir(tmp / "fault-cache" / "activations" / "new", lambda d: (d / "a").write_text("x"))
    out.append(
        (
            "staging folder of a killed writer",
            not stale.exists() and remove_stale_staging(stale.parent) == 0,
        )
    )
    live = subprocess.Popen(["sleep", "30"])
    me = psutil.Process(live.pid)
    tags = {
        "husai.driver_host": socket.gethostname(),
        "husai.driver_pid": f"{live.pid}:{me.create_time():.2f}",
    }
    try:
        refuse_if_alive(RunView("r", "1", "s", "RUNNING", 0, None, {}, {}, tags))
        out.append(("--resume against a live sweep", False))
    except InputError:
        out.append(("--resume against a live sweep", live.poll() is None))
    live.kill()
    live.wait()
    return out


def concurrency(tmp: Path) -> tuple[int, int, int]:
    """(rounds, duplicates, processes that failed): 4 identical trials at once, one round."""
    from husai.registry.tracking import Tracker

    folder = tmp / "conc"
    folder.mkdir()
    cfg = folder / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "name": "same"}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
           "HUSAI_CACHE_DIR": str(folder / "cache")}  # fmt: skip
    # A new store: the 4 commands also race to create it (MLflow's schema migrations).
    cmd = [sys.executable, "-m", "husai", "trial", "--config", str(cfg), "--allow-memorised", "yes"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(4)
    ]
    for p in procs:
        p.wait(timeout=600)
    tracker = Tracker(env["MLFLOW_TRACKING_URI"])
    exps = [e.experiment_id for e in tracker.client.search_experiments()]
    kinds = [r.data.tags.get("husai.kind") for r in tracker.client.search_runs(exps)]
    dups = sum(max(0, kinds.count(k) - 1) for k in ("trial", "base_model", "activations"))
    return 1, dups, sum(p.returncode != 0 for p in procs)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="husai-reliability-") as d:
        tmp = Path(d)
        bad = bad_inputs(tmp)
        injected = faults(tmp)
        rounds, dups, failed = concurrency(tmp)
    for what, refused, made in bad:
        print(f"  bad input: {what:<30} refused before compute: {refused}  runs written: {made}")
    for what, ok in injected:
        print(f"  fault: {what:<40} survived: {ok}")
    print(f"  concurrency: {rounds} round(s) of 4 identical trials, processes failed: {failed}")
    print(
        "\n| bad inputs tried | refused before compute | runs written | faults injected "
        "| survived | concurrency rounds | duplicates |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {len(bad)} | {sum(r for _, r, _ in bad)} | {sum(m for _, _, m in bad)} "
        f"| {len(injected)} | {sum(ok for _, ok in injected)} | {rounds} | {dups} |"
    )


if __name__ == "__main__":
    main()
