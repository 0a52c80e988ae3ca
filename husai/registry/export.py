"""Export a registered `husai-sae` version as a plain sae-lens SAE folder, for tools outside
HUSAI (the real SAEBench and CE-Bench among them).

    husai export --version 3 --out exported/sae-v3
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from husai import names
from husai.config.experiment import hook_layer
from husai.core.errors import InputError
from husai.registry.records import find_activations_run
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

## Running the official SAEBench / CE-Bench

`cfg.json`'s `metadata` names the model and hook the SAE reads ({model}, {hook}), as both
harnesses expect. `husai external --version {version} --harness saebench|cebench ...` runs them
on this folder and records their metrics on the version (HUSAI's README, "Official
benchmarks"). HUSAI's own `local/*` metrics are local stand-ins, on the modular-addition
model or on your rows; the official harnesses run a language model on their own datasets.
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
    params = tracker.get_run_params(trial) if trial else {}
    hook = params.get(names.PARAM_HOOK, "?")
    model = _model_metadata(tracker, params, staging / "cfg.json")
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
            model=model,
        )
    )


def lm_model_of(tracker: Tracker, trial_params: Mapping[str, str]) -> str | None:
    """The language model (a TransformerLens name or a folder) whose activations a trial's
    SAEs read, from the run that logged them; None for the task's model or a user's rows."""
    return _acts_params(tracker, trial_params).get(names.PARAM_LM_MODEL)


def _acts_params(tracker: Tracker, trial_params: Mapping[str, str]) -> dict[str, str]:
    """The params of the run that logged a trial's activations ({} if none did)."""
    key = trial_params.get(names.PARAM_ACTIVATION_KEY)
    acts_run = find_activations_run(tracker, key) if key else None
    return tracker.get_run_params(acts_run) if acts_run else {}


def _model_metadata(tracker: Tracker, params: dict[str, str], cfg_json: Path) -> str:
    """Name the model and hook the SAE reads in cfg.json's `metadata` (sae-lens's fields),
    which SAEBench and CE-Bench read to run the model; the model for the README. Only a
    language model is named (no harness can load the task's model or know a user's)."""
    hook = params.get(names.PARAM_HOOK)
    acts = _acts_params(tracker, params)
    model = acts.get(names.PARAM_LM_MODEL)
    meta: dict[str, Any] = {"prepend_bos": True} if model else {}
    if model:
        meta["model_name"] = model
    if hook and hook != "user":
        meta["hook_name"] = hook
        if (layer := hook_layer(hook)) is not None:
            meta["hook_layer"] = layer
    if names.PARAM_LM_CONTEXT_SIZE in acts:
        meta["context_size"] = int(acts[names.PARAM_LM_CONTEXT_SIZE])
    cfg = json.loads(cfg_json.read_text())
    cfg["metadata"] = {**cfg.get("metadata", {}), **meta}
    cfg_json.write_text(json.dumps(cfg, indent=2))
    return model or (
        "HUSAI's modular-addition model" if hook and hook != "user" else "your own rows"
    )
