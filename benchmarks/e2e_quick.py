"""End-to-end stage timings of `make demo` (`husai pipeline` on sweeps/quick.yaml).

Runs the pipeline twice into one empty temporary store (MLflow and activation cache), as a
first and a second `make demo` would, and prints each stage's wall time side by side. Package
installation is not included (`make demo` on a fresh clone adds it; see README).

    .venv/bin/python benchmarks/e2e_quick.py [--sweep sweeps/quick.yaml] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", default=str(ROOT / "sweeps" / "quick.yaml"))
    ap.add_argument("--policy", default=str(ROOT / "gates" / "default.yaml"))
    ap.add_argument("--smoke", action="store_true", help="the sweep's smoke section")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="husai-e2e-") as tmp:
        os.environ["HUSAI_CACHE_DIR"] = str(Path(tmp) / "cache")
        uri = f"sqlite:///{tmp}/mlflow.db"
        from husai.run.pipeline import run_pipeline

        runs, walls = [], []
        for _ in range(2):
            start = time.perf_counter()
            # The pipeline's own lines go to a buffer; the table below is the output.
            with contextlib.redirect_stdout(io.StringIO()):
                runs.append(
                    run_pipeline(Path(args.sweep), Path(args.policy), args.smoke, tracking_uri=uri)
                )
            walls.append(time.perf_counter() - start)
    first, second = runs
    print(f"{'stage':<14}{'first run (s)':>15}{'share':>8}{'second run (s)':>16}  second run")
    for a, b in zip(first.steps, second.steps, strict=True):
        share = a.seconds / walls[0]
        print(f"{a.name:<14}{a.seconds:>15.1f}{share:>8.0%}{b.seconds:>16.1f}  {b.how}")
    print(f"{'total (wall)':<14}{walls[0]:>15.1f}{'':>8}{walls[1]:>16.1f}")
    print(f"gate decision: {'pass' if first.gate.decision.pass_all else 'blocked'}")


if __name__ == "__main__":
    main()
