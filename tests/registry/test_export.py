"""`husai export`: a registered husai-sae version as a plain sae-lens folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from husai.cli import EXIT_BAD_INPUT, main
from husai.sae.build import load_sae
from tests.helpers import user_acts, write_cfg


def test_export_writes_a_loadable_sae_lens_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acts = user_acts(tmp_path)
    assert (
        main(["trial", "--config", str(write_cfg(tmp_path)), "--activations-file", str(acts)]) == 0
    )
    out = tmp_path / "exported" / "v1"
    assert main(["export", "--version", "1", "--out", str(out)]) == 0
    sae = load_sae(out)
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (16, 32)
    assert "SAEBench" in (out / "README.md").read_text()
    x = torch.randn(5, 16)
    assert sae.encode(x).shape == (5, 32)
    capsys.readouterr()

    # Refusals: one line, exit 2, nothing written or overwritten.
    assert main(["export", "--version", "7", "--out", str(tmp_path / "x")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert "--version: husai-sae has no version '7'" in err and "\n" not in err
    assert not (tmp_path / "x").exists()
    assert main(["export", "--version", "1", "--out", str(out)]) == EXIT_BAD_INPUT
    assert "already exists" in capsys.readouterr().err
