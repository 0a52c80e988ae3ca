"""The calibration benchmark, reduced to one set of each kind (`benchmarks/calibration.py
--reduced`, run as a user runs it): on a featureless Gaussian (participation ratio 11, d_sae 8x)
the excess over the surrogate null is about 0, its interval covers 0 and the default stability
check blocks; on a known dictionary (32 atoms, features half of the variance, d_sae 64) it
promotes. The full bank's table is in the README."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def test_the_reduced_calibration_blocks_featureless_data_and_promotes_features(
    tmp_path: Path,
) -> None:
    script = ROOT / "benchmarks" / "calibration.py"
    done = subprocess.run(
        [sys.executable, str(script), "--reduced", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HUSAI_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "False promotions on featureless sets: 0/1" in done.stdout
    (featureless,) = [r for r in json.loads((tmp_path / "calibration.json").read_text())
                      if r["kind"] == "featureless"]  # fmt: skip
    # Calibrated: no bias a 5-seed trial could see (the covariance null's is +0.05 here).
    assert abs(featureless["excess"]) < 0.02, featureless
    assert featureless["excess_lcb"] < 0 < featureless["excess_ucb"]
    assert not featureless["promoted"]
    assert featureless["excess_covariance"] > 0.03  # the untrained null's bias, for contrast
    (features,) = [r for r in json.loads((tmp_path / "calibration.json").read_text())
                   if r["kind"] == "features"]  # fmt: skip
    assert features["promoted"] and features["excess"] > 0.1, features
    assert (tmp_path / "calibration.png").stat().st_size > 0
