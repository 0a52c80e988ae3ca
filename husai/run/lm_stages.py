"""The language-model activation stage: check and plan (no compute), find or extract, record.

`activations.source: transformer_lens` (husai.config.lm): the rows come from a TransformerLens
model over a local corpus (husai.model.lm_source), cached under their key like the task's rows
and recorded as a run in husai-activations, so another machine fetches them from MLflow. The
random-base null's rows come from the same architecture freshly initialised, over the same
tokens.

    husai extract --config my_lm.yaml
    husai trial --config my_lm.yaml
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

from husai import names
from husai.config.experiment import ExperimentConfig
from husai.model.activations import load_activations
from husai.model.lm_source import LMPlan, random_base_plan, write_lm_set
from husai.registry.claims import claim
from husai.registry.handles import ActivationsHandle
from husai.registry.records import LMSetInfo, record_lm_activations
from husai.registry.tracking import Tracker
from husai.run import stages


def lm_activations(
    cfg: ExperimentConfig, tracker: Tracker, p: LMPlan, cache_dir: Path | None = None
) -> ActivationsHandle:
    """The LM activation set `p` plans (`husai.model.lm_source.plan`, every check already
    made): on disk, in MLflow, or extracted."""
    return _lm_set(cfg, tracker, cache_dir, p, None)


def lm_random_base(
    cfg: ExperimentConfig, tracker: Tracker, p: LMPlan, cache_dir: Path | None = None
) -> ActivationsHandle:
    """The random-base null's rows for the set `p` plans (`base.init_seed` seeds the twin)."""
    twin = random_base_plan(p, cfg.base.init_seed)
    return _lm_set(cfg, tracker, cache_dir, twin, names.NULL_RANDOM_BASE)


def _lm_set(
    cfg: ExperimentConfig, tracker: Tracker, cache_dir: Path | None, p: LMPlan, null: str | None
) -> ActivationsHandle:
    lm = cfg.activations.lm
    if lm is None:
        raise ValueError("activations.source transformer_lens without activations.lm")
    write = partial(write_lm_set, p, batch_size=lm.batch_size, chunk_rows=lm.chunk_rows)
    with claim(tracker, "activations", p.key):  # concurrent first runs extract it once
        path, run_id, source = stages.activation_entry(
            p.key,
            tracker,
            cache_dir,
            compute=lambda: write,
            adopt=lambda fetched: partial(shutil.copytree, fetched, dirs_exist_ok=True),
        )
        acts = load_activations(path, p.key)
        hit = source != "computed"
        if run_id is None:
            rec = stages.activations_record(acts, path, hit)
            info = LMSetInfo(p.model_sha256, p.corpus_sha256, p.n_docs)
            run_id = record_lm_activations(tracker, cfg, info, rec, null)
    return ActivationsHandle(acts=acts, run_id=run_id, cache_hit=hit, source=source, path=path)
