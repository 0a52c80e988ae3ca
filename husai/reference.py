"""Reference SAEs for the consistency objective: trained once, cached, logged, reused.

A reference is the plain recipe (same sae and train settings, lambda 0) trained with `ref_seed`,
which is never one of the trial's seeds. Its identity is a hash of (activation key, sae
settings, train settings, seed): found on disk, else in the MLflow run that logged it, else
trained and logged as its own run (kind `reference`) that every trial using it links to.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from husai import names
from husai.activations import cache_root, publish_dir
from husai.config import ExperimentConfig, stable_hash
from husai.sae import decoder, load_sae, save_sae
from husai.train import train_sae

if TYPE_CHECKING:
    from husai.activations import ActivationSet
    from husai.tracking import Tracker


@dataclass(frozen=True)
class Reference:
    seed: int
    key: str
    decoder: torch.Tensor  # [d_sae, d_in]
    run_id: str
    reused: bool


def reference_key(cfg: ExperimentConfig, activation_key: str, seed: int) -> str:
    # A reference is one seed trained by sae-lens's step, whatever `seed_batched` says: that
    # switch is left out so that references cached before it existed stay valid.
    train = cfg.train.model_dump(mode="json", exclude={"seed_batched"})
    return stable_hash(
        {"activation_key": activation_key, "sae": cfg.sae, "train": train, "seed": seed}
    )


def get_or_train_reference(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    seed: int,
    tracker: Tracker,
    cache_dir: Path | None = None,
) -> Reference:
    from husai.records import record_reference

    key = reference_key(cfg, acts.key, seed)
    path = (cache_dir or cache_root()) / "references" / key
    experiment = names.EXPERIMENT_SWEEP_PREFIX + cfg.name
    runs = tracker.find_runs(experiment, {names.PARAM_REF_KEY: key})
    reused = path.exists() or bool(runs)
    if not path.exists():
        if runs:
            with tempfile.TemporaryDirectory() as tmp:
                fetched = tracker.download(runs[0], names.ARTIFACT_SAE, Path(tmp))
                publish_dir(path, lambda dst: shutil.copytree(fetched, dst, dirs_exist_ok=True))
        else:
            trained = train_sae(cfg.sae, cfg.train, acts.train, seed)
            publish_dir(path, lambda dst: save_sae(trained.sae, dst))
    run_id = runs[0] if runs else record_reference(tracker, cfg, acts, seed, key, path)
    return Reference(
        seed=seed, key=key, decoder=decoder(load_sae(path)), run_id=run_id, reused=reused
    )
