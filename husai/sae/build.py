"""SAE construction from sae-lens training classes, seeded initialisation, sae-lens save/load.

Architectures (docs/design.md, "SAEs and training"): topk, batchtopk, jumprelu, standard
(ReLU + L1) and matryoshka_batchtopk, each the sae-lens TrainingSAE of that name. sae-lens does
not seed initialisation, so `build_sae` does, from its own generator state, leaving the global
RNG alone.
Weights are written by sae-lens itself (safetensors + cfg.json) and load with
`sae_lens.SAE.load_from_disk`; the decoder is always W_dec [d_sae, d_in], one row per latent.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE  # noqa: TID251 (the owner)
from sae_lens.registry import get_sae_training_class  # noqa: TID251 (the owner)
from sae_lens.saes.sae import TrainingSAE, TrainStepInput, TrainStepOutput  # noqa: TID251 (the owner)
from sae_lens.training.optim import CoefficientScheduler, get_lr_scheduler  # noqa: TID251 (the owner)

from husai import names
from husai.config.experiment import SAEConfig, SAETrainConfig
from husai.core.errors import InputError
from husai.sae.consistency import ConsistencyPenalty

__all__ = [
    "SAE",
    "CoefficientScheduler",
    "SAECheckpointError",
    "TrainStepInput",
    "TrainStepOutput",
    "TranscoderStepInput",
    "TrainingSAE",
    "build_sae",
    "coefficient_schedulers",
    "decoder",
    "load_sae",
    "lr_scheduler",
    "save_sae",
]


class SAECheckpointError(InputError):
    """A saved SAE that cannot be loaded; the message names the folder or file."""


def _training_cfg(cfg: SAEConfig, d_in: int) -> Any:
    _, cfg_cls = get_sae_training_class(cfg.architecture)
    common: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "decoder_init_norm": cfg.decoder_init_norm,
    }
    if cfg.architecture in ("topk", "batchtopk", "matryoshka_batchtopk"):
        common.update(k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient)
    if cfg.architecture == "matryoshka_batchtopk":
        common.update(matryoshka_widths=cfg.widths())
    if cfg.architecture == "standard":
        common.update(l1_coefficient=cfg.l1_coefficient, l1_warm_up_steps=cfg.sparsity_warmup_steps)
    if cfg.architecture == "jumprelu":
        common.update(
            l0_coefficient=cfg.l0_coefficient,
            l0_warm_up_steps=cfg.sparsity_warmup_steps,
            jumprelu_init_threshold=cfg.jumprelu_init_threshold,
            jumprelu_bandwidth=cfg.jumprelu_bandwidth,
        )
    return cfg_cls(**common)


class _ConsistencyMixin:
    """sae-lens extension: lambda * penalty joins the architecture's own auxiliary losses (as
    `consistency_loss`), with lambda delivered as the coefficient `consistency`."""

    consistency_penalty: ConsistencyPenalty
    consistency_lambda: float
    W_dec: torch.nn.Parameter

    def get_coefficients(self) -> dict[str, Any]:
        return {**super().get_coefficients(), "consistency": self.consistency_lambda}  # type: ignore[misc]

    def calculate_aux_loss(self, step_input: TrainStepInput, **kwargs: Any) -> Any:
        # Every sae-lens architecture returns its auxiliary losses as a dict.
        aux = super().calculate_aux_loss(step_input=step_input, **kwargs)  # type: ignore[misc]
        coeff = step_input.coefficients["consistency"]
        term = coeff * self.consistency_penalty(self.W_dec, step_input.n_training_steps)
        return {**aux, names.CURVE_CONSISTENCY: term}


@functools.cache
def _with_consistency(sae_cls: type) -> type:
    return type(f"Consistency{sae_cls.__name__}", (_ConsistencyMixin, sae_cls), {})


@dataclass
class TranscoderStepInput(TrainStepInput):
    """A training step whose reconstruction target is not the input (MLP in -> MLP out)."""

    target: torch.Tensor | None = None


class _TranscoderMixin:
    """sae-lens has no transcoder training class: this turns any of its training SAEs into one.
    The encoder reads `sae_in` (MLP input); every loss that compares a reconstruction with the
    input (the MSE, Matryoshka's inner widths, AuxK's residual) compares it with `target` (MLP
    output) instead. The architecture's own training step still runs in full (BatchTopK's
    threshold update, JumpReLU's threshold clamp), so a transcoder is trained exactly like an
    SAE of its recipe."""

    mse_loss_fn: Any

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        target = getattr(step_input, "target", None)
        if target is None:
            raise ValueError("a transcoder step needs TranscoderStepInput(target=...)")
        plain = self.mse_loss_fn
        self.mse_loss_fn = lambda pred, _input: plain(pred, target)
        try:
            return super().training_forward_pass(step_input)  # type: ignore[misc, no-any-return]
        finally:
            self.mse_loss_fn = plain

    def calculate_aux_loss(self, step_input: TrainStepInput, **kwargs: Any) -> Any:
        target = getattr(step_input, "target", None)
        if target is not None:
            step_input = replace(step_input, sae_in=target)
        return super().calculate_aux_loss(step_input=step_input, **kwargs)  # type: ignore[misc]


@functools.cache
def _as_transcoder(sae_cls: type) -> type:
    return type(f"Transcoder{sae_cls.__name__}", (_TranscoderMixin, sae_cls), {})


def build_sae(
    cfg: SAEConfig,
    d_in: int,
    init_seed: int,
    consistency: tuple[ConsistencyPenalty, float] | None = None,
    transcoder: bool = False,
    device: torch.device | None = None,
) -> TrainingSAE[Any]:
    """The sae-lens training SAE of `cfg.architecture`, initialised from `init_seed` only,
    then moved to `device`: the weights are drawn on the CPU wherever it trains, so a seed
    starts from the same weights on every device.

    With `consistency=(penalty, lambda)` the same class gains the consistency loss term; the
    initialisation is unchanged, and the saved SAE is an ordinary one of the architecture.
    `transcoder=True` trains it to map its input to another target (TranscoderStepInput).
    """
    sae_cfg = _training_cfg(cfg, d_in)
    sae_cls, _ = get_sae_training_class(cfg.architecture)
    if consistency is not None:
        sae_cls = _with_consistency(sae_cls)
    if transcoder:
        # b_dec is the output's bias: subtracting it from the input would mix the two spaces.
        sae_cfg.apply_b_dec_to_input = False
        sae_cls = _as_transcoder(sae_cls)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        sae = sae_cls(sae_cfg)
    if consistency is not None:
        sae.consistency_penalty, sae.consistency_lambda = consistency
    if device is not None and device.type != "cpu":
        sae = sae.to(device)  # sae-lens's `to` also moves cfg.device, where its buffers go
    return sae


def decoder(sae: SAE[Any]) -> torch.Tensor:
    """W_dec as [d_sae, d_in], checked against the SAE's own config, never guessed from a shape."""
    w = sae.W_dec.detach()
    expected = (sae.cfg.d_sae, sae.cfg.d_in)
    if tuple(w.shape) != expected:
        raise ValueError(f"W_dec has shape {tuple(w.shape)}, expected [d_sae, d_in] = {expected}")
    return w.clone()


def lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SAETrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """sae-lens's own schedule: linear warm-up, constant, linear decay to 0."""
    return get_lr_scheduler(
        "constant",
        optimizer=optimizer,
        training_steps=cfg.steps,
        lr=cfg.lr,
        warm_up_steps=cfg.lr_warmup_steps,
        decay_steps=cfg.lr_decay_steps,
        lr_end=cfg.lr,
        num_cycles=1,
    )


def coefficient_schedulers(sae: TrainingSAE[Any]) -> dict[str, CoefficientScheduler]:
    """The architecture's loss coefficients (l1, l0, ...) with their warm-ups, as sae-lens does."""
    out = {}
    for name, coeff in sae.get_coefficients().items():
        value, warm = (coeff.value, coeff.warm_up_steps) if hasattr(coeff, "value") else (coeff, 0)
        out[name] = CoefficientScheduler(warm_up_steps=warm, final_value=value)
    return out


def save_sae(sae: TrainingSAE[Any], directory: Path) -> Path:
    """sae-lens inference format (safetensors + cfg.json); BatchTopK saves as its JumpReLU form."""
    directory.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(str(directory))
    return directory


def load_sae(directory: Path) -> SAE[Any]:
    if (
        not (directory / "cfg.json").exists()
        or not (directory / "sae_weights.safetensors").exists()
    ):
        raise SAECheckpointError(f"{directory}: not an sae-lens SAE folder (cfg.json + weights)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SAE.load_from_disk(str(directory), device="cpu")
    except Exception as e:  # sae-lens raises many kinds; all mean the same thing to the user
        raise SAECheckpointError(
            f"{directory}: cannot load SAE ({type(e).__name__}: {e})"
        ) from None
