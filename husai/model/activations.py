"""Activations of the base model at one hook and position, split and cached by content hash.

Every p^2 pair goes through the model; the activation at the hook and position is one row. Rows
are split into SAE-train and SAE-eval (held out; every reconstruction number uses these) with
an explicit seed, after the shifted slice (pairs with both operands in a held-out top range) is
set apart for the OOD stress test. The cache key is a hash of (base model run and version, hook,
position, split seed, eval share, OOD share). This module computes, writes and reads one cache
entry; `husai.run.stages` finds an entry on disk or in the MLflow run that logged it.

    python -m husai extract --preset quick
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer  # noqa: TID251 (the owner)

from husai.config.experiment import ActivationsConfig, ExperimentConfig, hook_layer
from husai.core.cache import MANIFEST
from husai.core.errors import ConfigError, InputError, described, first_line
from husai.core.hashing import stable_hash
from husai.model.base_model import build_model, readout_logits
from husai.model.lm_source import ROW_FILES, read_lm_rows
from husai.model.rows import Rows, all_finite, as_tensor, max_in_memory_bytes
from husai.model.task import SEQ_LEN, make_modular_data, split_indices

ACTS_FILE = "acts.safetensors"
META_FILE = "meta.json"
CACHE_FORMAT = 2  # bump when the file layout changes; it is part of every key
# Below this, squared errors summed over a row and a batch stay well inside float32's range
# (3.4e38); values near it overflow.
MAX_ABS_ACTIVATION = 1e15


class ActivationCacheError(InputError):
    """A cached activation file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class ActivationSet:
    """Rows of activations; `*_rows` index the p^2 pairs (a = row // p, b = row % p)."""

    key: str
    p: int | None  # None for a user's own activations (no base model behind them)
    hook: str | None
    position: int | None
    train: Rows  # [n_train, d_in] float32; on disk (DiskRows) for a set too big for memory
    eval: torch.Tensor  # [n_eval, d_in] float32, held out
    train_rows: torch.Tensor  # [n_train] int64
    eval_rows: torch.Tensor  # [n_eval] int64
    # The shifted slice (pairs with both operands in the held-out range): never trained on.
    # None for a user's own activations or with activations.ood_frac = 0.
    ood: torch.Tensor | None = None  # [n_ood, d_in]
    ood_rows: torch.Tensor | None = None  # [n_ood] int64
    # The checksum of the cache entry these rows were loaded from (husai.core.cache); None for
    # rows never cached or an entry made before checksums.
    sha256: str | None = None

    @property
    def d_in(self) -> int:
        return int(self.train.shape[1])


def activation_key(
    base_run_id: str, base_version: str, base_hash: str, cfg: ActivationsConfig
) -> str:
    """The cache key of the activations of one registered base model (its run, version and
    config hash) at this hook, position and split."""
    return stable_hash(
        {
            "format": CACHE_FORMAT,
            "base_run_id": base_run_id,
            "base_version": base_version,
            "base_hash": base_hash,
            **_where(cfg),
        }
    )


def _where(cfg: ActivationsConfig) -> dict[str, object]:
    """What of the request changes the rows: the hook, the position and the split."""
    return {
        "hook": cfg.hook,
        "position": cfg.position,
        "split_seed": cfg.split_seed,
        "eval_frac": cfg.eval_frac,
        "ood_frac": cfg.ood_frac,
    }


def ood_mask(p: int, ood_frac: float) -> torch.Tensor:
    """[p^2] bool: pairs (a, b) = (row // p, row % p) with both operands in the top `ood_frac`
    of 0..p-1. These rows are the shifted slice; no SAE ever trains on them."""
    n_held = round(ood_frac * p)
    rows = torch.arange(p * p)
    cut = p - n_held
    return (rows // p >= cut) & (rows % p >= cut)


def n_split_rows(cfg: ExperimentConfig) -> tuple[int, int]:
    """(SAE-train, held-out) row counts an extraction will give, known before any compute."""
    n = int((~ood_mask(cfg.task.p, cfg.activations.ood_frac)).sum())
    n_train = round((1.0 - cfg.activations.eval_frac) * n)  # the rule of split_indices
    return n_train, n - n_train


def check_hook(cfg: ExperimentConfig) -> None:
    """Fail before any training when the hook does not exist in the configured model or the
    split would leave a side empty."""
    n_train, n_eval = n_split_rows(cfg)
    if n_train == 0 or n_eval == 0:
        raise ConfigError(
            f"activations.eval_frac: {cfg.activations.eval_frac} of {cfg.task.p**2} rows "
            "leaves the SAE-train or held-out side empty"
        )
    hooks = build_model(cfg.task, cfg.base).hook_dict
    if cfg.activations.hook not in hooks:
        near = [h for h in hooks if h.startswith("blocks.0.hook_")]
        raise ConfigError(
            f"activations.hook: {cfg.activations.hook!r} is not a hook of this model "
            f"(e.g. {', '.join(near[:4])})"
        )


def extract_rows(
    model: HookedTransformer, p: int, hooks: list[str], position: int, batch: int = 4096
) -> dict[str, torch.Tensor]:
    """Hook -> [p^2, d] activations of every pair at `position`, row r = pair (r // p, r % p)."""
    data = make_modular_data(p)
    chunks: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    dev = next(model.parameters()).device  # wherever the model is; the rows come back to CPU
    with torch.no_grad():
        for i in range(0, len(data), batch):
            _, cache = model.run_with_cache(
                data.tokens[i : i + batch].to(dev), names_filter=hooks, return_type=None
            )
            for h in hooks:
                act = cache[h][:, position % SEQ_LEN]
                act = act.reshape(act.shape[0], -1).float().cpu()  # heads flattened (hook_z)
                chunks[h].append(act)
    return {h: torch.cat(c) for h, c in chunks.items()}


def mlp_hooks(model: HookedTransformer, hook: str) -> tuple[str, str]:
    """(MLP input, MLP output) hooks of the layer `hook` belongs to: the transcoder's ends."""
    n = hook_layer(hook)
    if n is None:
        raise ValueError(f"hook {hook!r} is not inside a transformer block")
    layer = f"blocks.{n}"
    normalized = f"{layer}.ln2.hook_normalized"  # absent in a model without LayerNorm
    mlp_in = normalized if normalized in model.hook_dict else f"{layer}.hook_resid_mid"
    return mlp_in, f"{layer}.hook_mlp_out"


def extract(
    model: HookedTransformer, p: int, cfg: ActivationsConfig, key: str, batch: int = 4096
) -> ActivationSet:
    rows = extract_rows(model, p, [cfg.hook], cfg.position, batch)[cfg.hook]
    shifted = ood_mask(p, cfg.ood_frac)
    in_dist = torch.nonzero(~shifted).flatten()
    first, rest = split_indices(len(in_dist), 1.0 - cfg.eval_frac, cfg.split_seed)
    train_rows, eval_rows = in_dist[first], in_dist[rest]
    ood_rows = torch.nonzero(shifted).flatten()
    return ActivationSet(
        key=key,
        p=p,
        hook=cfg.hook,
        position=cfg.position,
        train=rows[train_rows].contiguous(),
        eval=rows[eval_rows].contiguous(),
        train_rows=train_rows,
        eval_rows=eval_rows,
        ood=rows[ood_rows].contiguous() if len(ood_rows) else None,
        ood_rows=ood_rows if len(ood_rows) else None,
    )


def random_base_key(base_hash: str, cfg: ActivationsConfig) -> str:
    """The cache key of the random-base null's activations: the base model of this config hash
    at its initialisation (the trained model's own starting point), at this hook, position and
    split. Deterministic from the config alone, so no run id is part of it."""
    return stable_hash(
        {"format": CACHE_FORMAT, "null": "random_base", "base_hash": base_hash, **_where(cfg)}
    )


def extract_random_base(cfg: ExperimentConfig, key: str) -> ActivationSet:
    """Activations of the randomly initialised base model (`base.init_seed`, never trained) at
    the experiment's hook and position, split exactly as the trained model's rows are."""
    return extract(build_model(cfg.task, cfg.base), cfg.task.p, cfg.activations, key)


def save_activations(acts: ActivationSet, directory: Path) -> Path:
    """Write one cache entry into `directory` (`husai.core.cache.publish_dir` makes it atomic)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "train": as_tensor(acts.train),
        "eval": acts.eval,
        "train_rows": acts.train_rows,
        "eval_rows": acts.eval_rows,
    }
    if acts.ood is not None and acts.ood_rows is not None:
        tensors.update(ood=acts.ood, ood_rows=acts.ood_rows)
    save_file(tensors, str(directory / ACTS_FILE))
    meta = {"key": acts.key, "p": acts.p, "hook": acts.hook, "position": acts.position}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def load_activations(directory: Path, key: str | None = None) -> ActivationSet:
    meta_path, acts_path = directory / META_FILE, directory / ACTS_FILE
    limit = max_in_memory_bytes()  # a bad setting is its own error, not a corrupt entry
    try:
        meta = json.loads(meta_path.read_text())
        train: Rows
        if meta.get("source") == "transformer_lens":
            # A language model's rows (husai.model.lm_source), too big ones left on disk.
            acts_path = directory / ROW_FILES["train"]
            train, tensors = read_lm_rows(directory, limit)
            meta = {**meta, "p": None, "position": None}
        else:
            tensors = load_file(str(acts_path))
            train = tensors["train"]
        acts = ActivationSet(
            key=meta["key"],
            p=meta["p"],
            hook=meta["hook"],
            position=meta["position"],
            train=train,
            eval=tensors["eval"],
            train_rows=tensors["train_rows"],
            eval_rows=tensors["eval_rows"],
            ood=tensors.get("ood"),
            ood_rows=tensors.get("ood_rows"),
        )
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise ActivationCacheError(
            f"{directory}: corrupt activation cache entry ({described(e)}); delete it to recompute"
        ) from None
    if key is not None and acts.key != key:
        raise ActivationCacheError(f"{meta_path}: holds key {acts.key}, expected {key}")
    if (
        acts.train.shape[0] != acts.train_rows.shape[0]
        or acts.eval.shape[0] != acts.eval_rows.shape[0]
    ):
        raise ActivationCacheError(f"{acts_path}: row counts do not match their indices")
    for name in ("train", "eval", "ood"):
        rows = getattr(acts, name)
        if rows is not None and not all_finite(rows):
            # Checked like a user's file: NaN or inf would surface only after training.
            raise ActivationCacheError(f"{acts_path}: {name} rows hold NaN or inf values")
    manifest = directory / MANIFEST
    if manifest.exists():
        acts = replace(acts, sha256=manifest.read_text().strip())
    return acts


def readout_ce(
    model: HookedTransformer,
    p: int,
    rows: torch.Tensor,
    hook: str,
    position: int,
    patch: torch.Tensor | None,
) -> float:
    """Cross-entropy at the '=' read-out over `rows`, with the activation at (hook, position)
    replaced by `patch` [len(rows), d_in] (flattened like the cached rows), or left clean."""
    data = make_modular_data(p)
    tokens, labels = data.tokens[rows], data.labels[rows]
    pos = position % SEQ_LEN

    def splice(act: torch.Tensor, hook: object) -> torch.Tensor:
        assert patch is not None
        act = act.clone()
        act[:, pos] = patch.reshape(act[:, pos].shape).to(act.dtype)
        return act

    fwd_hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = (
        [] if patch is None else [(hook, splice)]
    )
    with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
        logits = readout_logits(model, tokens)
    return float(torch.nn.functional.cross_entropy(logits, labels))


def _read_user_matrix(path: Path) -> torch.Tensor:
    """A [n, d_in] float matrix from .safetensors, .npy or .pt, never unpickling anything."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            tensors = load_file(str(path))
            if len(tensors) != 1 and "activations" not in tensors:
                raise ValueError(
                    f"holds tensors {sorted(tensors)}; name one 'activations' or store only one"
                )
            x = tensors.get("activations", next(iter(tensors.values())))
        elif suffix == ".npy":
            x = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".pt":
            x = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"holds a {type(x).__name__}, expected one tensor")
        else:
            raise ValueError("unsupported suffix; use .safetensors, .npy or .pt")
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError) as e:
        # torch.load(weights_only=True) refuses anything but tensors: pickled objects land here.
        raise ActivationCacheError(f"{path}: cannot read activations ({first_line(e)})") from None
    if x.ndim != 2 or x.shape[0] < 4 or x.shape[1] < 1:
        raise ActivationCacheError(f"{path}: expected a [n, d_in] matrix, got {list(x.shape)}")
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise ActivationCacheError(f"{path}: activations must be finite floating-point numbers")
    largest = float(x.abs().max())
    if largest > MAX_ABS_ACTIVATION:
        raise ActivationCacheError(
            f"{path}: activations reach {largest:.3g}; float32 sums of squares overflow beyond "
            f"|x| {MAX_ABS_ACTIVATION:g}: rescale them"
        )
    return x.float().contiguous()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_user_activations(
    path: Path, cfg: ActivationsConfig, digest: str | None = None
) -> ActivationSet:
    """Bring your own activations: held-out split with the config's seed; the key is a content
    hash of the file plus the split, so the same file and split always get the same key.
    `digest`: the file's `file_sha256`, where the caller has it."""
    x = _read_user_matrix(path)
    digest = digest or file_sha256(path)
    key = stable_hash(
        {
            "format": CACHE_FORMAT,
            "file_sha256": digest,
            "split_seed": cfg.split_seed,
            "eval_frac": cfg.eval_frac,
            "ood_frac": cfg.ood_frac,
        }
    )
    try:
        train_rows, eval_rows = split_indices(x.shape[0], 1.0 - cfg.eval_frac, cfg.split_seed)
    except ValueError as e:
        raise ActivationCacheError(f"{path}: {e}") from None
    for side, rows in (("SAE-train", train_rows), ("held-out", eval_rows)):
        # FVU divides by the rows' variance: rows that never vary leave nothing to reconstruct.
        if float(x[rows].double().var(dim=0).sum()) == 0.0:
            raise ActivationCacheError(
                f"{path}: the {side} rows (split seed {cfg.split_seed}) are all the same row: "
                "they have no variance to reconstruct"
            )
    return ActivationSet(
        key=key,
        p=None,
        hook=None,
        position=None,
        train=x[train_rows].contiguous(),
        eval=x[eval_rows].contiguous(),
        train_rows=train_rows,
        eval_rows=eval_rows,
    )
