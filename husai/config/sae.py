"""The SAE recipe: its architecture and shape (`SAEConfig`) and the training loop every seed of
a trial shares (`SAETrainConfig`). Part of an experiment config (`husai.config.experiment`,
which re-exports both); each field has a one-line description.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from husai.config.strict import Strict

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard", "matryoshka_batchtopk")
Architecture = Literal["topk", "batchtopk", "jumprelu", "standard", "matryoshka_batchtopk"]
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk")


class SAEConfig(Strict):
    """One SAE recipe, built from the sae-lens training class of its architecture."""

    architecture: Architecture = Field("topk", description="sae-lens training architecture")
    d_sae: int = Field(512, ge=2, description="number of latents (dictionary size)")
    k: int = Field(16, ge=1, description="active latents per row (topk family only)")
    aux_loss_coefficient: float = Field(
        1.0, ge=0, description="weight of the dead-latent AuxK loss (topk family)"
    )
    l1_coefficient: float = Field(1.0, ge=0, description="L1 sparsity weight (standard)")
    l0_coefficient: float = Field(1.0, ge=0, description="L0 sparsity weight (jumprelu)")
    jumprelu_init_threshold: float = Field(0.01, gt=0, description="initial JumpReLU threshold")
    jumprelu_bandwidth: float = Field(0.05, gt=0, description="JumpReLU STE bandwidth")
    sparsity_warmup_steps: int = Field(0, ge=0, description="linear warm-up of the L1/L0 weight")
    matryoshka_widths: tuple[int, ...] | None = Field(
        None, description="nested dictionary widths ending at d_sae; default d_sae/4, /2, 1"
    )
    decoder_init_norm: float = Field(0.1, gt=0, description="decoder row norm at initialisation")

    @model_validator(mode="after")
    def _shapes(self) -> SAEConfig:
        if self.architecture in TOPK_FAMILY and self.k > self.d_sae:
            raise ValueError(f"k: {self.k} exceeds d_sae {self.d_sae}")
        w = self.matryoshka_widths
        if w is not None:
            if self.architecture != "matryoshka_batchtopk":
                raise ValueError("matryoshka_widths: only for architecture matryoshka_batchtopk")
            if list(w) != sorted(set(w)) or w[0] < 1 or w[-1] != self.d_sae:
                raise ValueError(
                    f"matryoshka_widths: must increase strictly and end at d_sae {self.d_sae}"
                )
        return self

    def widths(self) -> list[int]:
        if self.matryoshka_widths is not None:
            return list(self.matryoshka_widths)
        return sorted({max(1, self.d_sae // 4), max(1, self.d_sae // 2), self.d_sae})


class SAETrainConfig(Strict):
    """The training loop shared by every seed of a trial."""

    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="matmul precision of SAE training: bfloat16 runs the encoder/decoder "
        "products under autocast (for GPUs); parameters and optimizer stay float32",
    )
    steps: int = Field(1500, ge=1, description="optimizer steps per seed")
    batch_size: int = Field(512, ge=1, description="rows per step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    lr_warmup_steps: int = Field(50, ge=0, description="linear LR warm-up steps")
    lr_decay_steps: int = Field(300, ge=0, description="linear LR decay to 0 over the last steps")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")
    dead_window: int = Field(
        200, ge=1, description="steps without firing before a latent counts as dead (AuxK)"
    )
    log_every: int = Field(10, ge=1, description="steps between logged curve points")
    seed_batched: bool = Field(
        True,
        description="train a trial's seeds together where a batched path exists (topk, "
        "batchtopk; not with the consistency term); false: one after another via sae-lens",
    )

    def identity(self, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """The fields that make a result what it is, for cache keys and hashes: float32 (the
        default) is left out, so keys made before `dtype` existed stay valid."""
        data = self.model_dump(mode="json", exclude=set(exclude))
        if data.get("dtype") == "float32":
            del data["dtype"]
        return data

    @model_validator(mode="after")
    def _schedule(self) -> SAETrainConfig:
        if self.lr_warmup_steps + self.lr_decay_steps > self.steps:
            raise ValueError(
                f"lr_warmup_steps + lr_decay_steps ({self.lr_warmup_steps} + "
                f"{self.lr_decay_steps}) exceed steps {self.steps}"
            )
        return self
