"""Reliability, counted: bad inputs refused before compute, faults survived, duplicates under
concurrency. Every case runs the real CLI or stage against its own temporary MLflow store.

- Bad inputs, by kind: experiment configs, sweep files, activation files and tracking stores,
  each given to `husai.cli.main`. Refused cleanly means the expected exit code (2 for bad
  input; 1 for a tracking server that does not answer, within its deadline), one line on
  stderr, and no MLflow database created (so no run).
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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

K_SPACE = "search_space: {sae.k: {type: categorical, choices: [8, 16]}}\n"
SWEEP_FILES = [  # fields a sweep cannot honour: refused at load, naming the field
    (
        "set by key, confirmed on a fresh split",
        SWEEP_HEAD.replace(
            "{preset: quick}", "{preset: quick, activations: {key: %s}}" % ("0" * 16)
        )
        + K_SPACE,
    ),
    (
        "own file, hook swept",
        SWEEP_HEAD.replace("{preset: quick}", "{preset: quick, activations: {file: a.npy}}")
        + "search_space: {activations.hook: "
        + "{type: categorical, choices: [blocks.0.hook_resid_post]}}\n",
    ),
    (
        "register_unconfirmed with a confirmation",
        SWEEP_HEAD + K_SPACE + "confirm: {register_unconfirmed: true}\n",
    ),
    (
        "deferred evals, no confirmation",
        SWEEP_HEAD + K_SPACE + "confirm: {enabled: false, deferred_evals: [transcoder]}\n",
    ),
]
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing answers
CONNECT_TIMEOUT_S = 5  # HUSAI_TRACKING_CONNECT_TIMEOUT_S for this run (default 30)


@dataclass(frozen=True)
class Case:
    kind: str
    what: str
    argv: list[str]  # "{path}": the case's file
    text: str | bytes | None  # the config or sweep file written at {path}
    rows: np.ndarray | None = None  # an activation file written at {path}.npy
    code: int = 2  # the exit code that means "refused cleanly"


def _rows(kind: str) -> np.ndarray:
    """A user's activation file that must be refused."""
    from husai.model.task import split_indices

    x = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    if kind == "constant":
        return np.ones_like(x)
    if kind == "constant held-out":  # varied SAE-train rows, identical held-out ones
        _, held = split_indices(200, 0.8, 0)
        x[held.numpy()] = 1.0
    elif kind == "nan":
        x[3, 3] = np.nan
    elif kind == "1-d":
        return x[:, 0].copy()
    return x


def cases() -> list[Case]:
    trial, sweep = ["trial", "--config", "{path}"], ["sweep", "--sweep", "{path}"]
    own = ["trial", "--preset", "quick", "--activations-file", "{path}.npy"]
    out = [Case("experiment configs", w, trial, f"preset: quick\n{t}\n") for w, t in CONFIGS]
    out.append(Case("experiment configs", "non-UTF-8 config", trial, b"sae: {k: \xff\xfe}\n"))
    out += [Case("sweep files", w, sweep, SWEEP_HEAD + f"search_space: {s}\n") for w, s in SPACES]
    out += [Case("sweep files", w, sweep, t) for w, t in SWEEP_FILES]
    for what in ("constant", "constant held-out", "nan", "1-d"):
        out.append(Case("activation files", f"{what} rows (trial)", own, None, _rows(what)))
    sweep_own = SWEEP_HEAD.replace("{preset: quick}", "{preset: quick, activations: {file: %s}}")
    out.append(
        Case("activation files", "constant rows (sweep)", sweep, sweep_own, _rows("constant"))
    )
    quick = ["trial", "--preset", "quick", "--tracking-uri"]
    out += [
        Case("tracking stores", "unknown URI scheme", [*quick, "foo://bar"], None),
        Case("tracking stores", "a plain folder as the URI", [*quick, "{path}"], None),
        Case(
            "tracking stores", "server not answering (trial)", [*quick, UNREACHABLE], None, code=1
        ),
        Case(
            "tracking stores",
            "server not answering (gate)",
            ["gate", "--alias", "candidate", "--tracking-uri", UNREACHABLE],
            None,
            code=1,
        ),
    ]
    return out


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


@dataclass(frozen=True)
class Refusal:
    case: Case
    refused: bool  # the expected exit code, one line, no database
    runs: int
    seconds: float


def bad_inputs(tmp: Path) -> list[Refusal]:
    os.environ["HUSAI_TRACKING_CONNECT_TIMEOUT_S"] = str(CONNECT_TIMEOUT_S)
    out = []
    for i, case in enumerate(cases()):
        folder = tmp / f"bad{i}"
        folder.mkdir()
        path = folder / "input.yaml"
        if case.rows is not None:
            np.save(folder / "input.yaml.npy", case.rows)
        text = case.text
        if isinstance(text, str) and "%s" in text:
            text = text % f"{path}.npy"
        if isinstance(text, bytes):
            path.write_bytes(text)
        elif text is not None:
            path.write_text(text)
        else:
            path.mkdir()  # the plain folder case's URI; unused by the others
        argv = [a.replace("{path}", str(path)) for a in case.argv]
        start = time.perf_counter()
        code, err, runs = _cli(argv, folder)
        seconds = time.perf_counter() - start
        made_db = (folder / "store" / "mlflow.db").exists()
        refused = code == case.code and len(err.splitlines()) == 1 and not made_db
        out.append(Refusal(case, refused, runs, seconds))
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
    from husai.run.sweep.resume import refuse_if_alive

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
    for r in bad:
        c = r.case
        print(
            f"  {c.kind + ': ' + c.what:<62} refused cleanly: {r.refused}  runs written: {r.runs}"
            f"  ({r.seconds:.1f} s)"
        )
    for what, ok in injected:
        print(f"  fault: {what:<40} survived: {ok}")
    print(f"  concurrency: {rounds} round(s) of 4 identical trials, processes failed: {failed}")
    print("\n| kind | cases | refused cleanly / survived | runs written or duplicates |")
    print("|---|---|---|---|")
    for kind in dict.fromkeys(r.case.kind for r in bad):
        mine = [r for r in bad if r.case.kind == kind]
        print(
            f"| bad input: {kind} | {len(mine)} | {sum(r.refused for r in mine)} "
            f"| {sum(r.runs for r in mine)} |"
        )
    print(f"| faults injected | {len(injected)} | {sum(ok for _, ok in injected)} | |")
    print(
        f"| concurrency rounds (4 processes) | {rounds} | {rounds - min(rounds, failed)} | {dups} |"
    )
    slowest = max((r for r in bad if r.case.code == 1), key=lambda r: r.seconds)
    print(
        f"\nA server that does not answer was refused after {slowest.seconds:.1f} s at most "
        f"(HUSAI_TRACKING_CONNECT_TIMEOUT_S={CONNECT_TIMEOUT_S})."
    )


if __name__ == "__main__":
    main()
