"""Export a registered `husai-sae` version as a plain sae-lens SAE folder, for tools outside
HUSAI (the real SAEBench and CE-Bench among them).

    husai export --version 3 --out exported/sae-v3
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from husai import names
from husai.core.errors import InputError
from husai.registry.tracking import Tracker
from husai.registry.views import VersionView
from husai.sae.build import load_sae

README = """# husai-sae version {version}

An sae-lens SAE ({architecture}, d_in {d_in}, d_sae {d_sae}) exported by `husai export`
from the MLflow registry at {uri} (trial run {trial_run_id}, seed {seed}).

```python
from sae_lens import SAE
sae = SAE.load_from_disk("{out}", device="cpu")
latents = sae.encode(activations)  # activations: [n, {d_in}] from {hook}
```

## Running the real SAEBench / CE-Bench

HUSAI's `external/*` metrics are local stand-ins on the modular-addition model (HUSAI's
docs/metrics.md defines them). The real benchmarks run a *language model* on their own datasets,
so they apply to SAEs trained on that model's activations (HUSAI trains on any activations you
bring with `husai trial --activations-file`). Where you have that model:

- SAEBench (https://github.com/adamkarvonen/SAEBench): install it, load this folder as above
  and pass `[("husai-v{version}", sae)]` as the selected SAEs to an eval's `run_eval` (see its
  "Custom SAE usage" section; sparse probing is the counterpart of `external/probe_excess`).
- CE-Bench (contrastive evaluation): load the SAE the same way and run its contrastive and
  independence scoring; compare with `external/contrastive_excess`.
"""


@dataclass(frozen=True)
class Exported:
    version: str
    out: Path
    trial_run_id: str


def export_sae(tracker: Tracker, version: str, out: Path) -> Exported:
    """Copy the version's sae-lens folder to `out` (which must not exist) with a README."""
    if out.exists():
        raise InputError(f"--out: {out} already exists; choose a new folder")
    mv = tracker.model_version(names.SAE_MODEL_NAME, version, None)
    if mv is None:
        raise InputError(
            f"--version: {names.SAE_MODEL_NAME} has no version {version!r} in {tracker.uri}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tracker.download_model_version(names.SAE_MODEL_NAME, str(mv.version), Path(tmp))
        src = model_dir / "artifacts" / names.ARTIFACT_SAE
        sae = load_sae(src)  # refuses a folder sae-lens cannot load, before anything is written
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
        try:
            _fill(staging, src, mv, sae, tracker, out)
            staging.rename(out)  # all or nothing: no half-written export
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    tags = mv.tags
    return Exported(
        version=str(mv.version), out=out, trial_run_id=tags.get(names.TAG_TRIAL_RUN_ID, "")
    )


def _fill(staging: Path, src: Path, mv: VersionView, sae: Any, tracker: Tracker, out: Path) -> None:
    shutil.copytree(src, staging, dirs_exist_ok=True)
    tags = mv.tags
    trial = tags.get(names.TAG_TRIAL_RUN_ID)
    hook = tracker.get_run_params(trial).get(names.PARAM_HOOK, "?") if trial else "?"
    (staging / "README.md").write_text(
        README.format(
            version=mv.version,
            architecture=tags.get(names.TAG_ARCHITECTURE, "?"),
            d_in=sae.cfg.d_in,
            d_sae=sae.cfg.d_sae,
            uri=tracker.uri,
            trial_run_id=trial or "?",
            seed=tags.get(names.TAG_SEED, "?"),
            out=out,
            hook=hook,
        )
    )
