"""Typed experiment configs: every section of an experiment YAML, with its defaults and checks.

A config file is YAML with the sections below; any field left out takes its default, and
`preset: quick` (or `paper`) starts from a shipped preset that the rest of the file overrides
(`husai.config.loading` reads files and presets):

    preset: quick
    task: {p: 59}
    activations: {split_seed: 3}

Every model forbids unknown fields, so a misspelled key is an error that names it and the file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from husai.config.lm import LanguageModelSource
from husai.config.sae import (  # noqa: F401 (re-exported: the recipe is part of an experiment)
    ARCHITECTURES,
    TOPK_FAMILY,
    Architecture,
    SAEConfig,
    SAETrainConfig,
)
from husai.config.strict import Strict
from husai.core.hashing import derived_seed, stable_hash


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


class TaskConfig(Strict):
    """Modular addition c = (a + b) mod p on inputs [a, b, =]."""

    p: int = Field(113, description="prime modulus; the vocabulary is p numbers plus '='")
    train_frac: float = Field(0.3, description="share of all p^2 pairs the base model trains on")
    data_seed: int = Field(
        0, ge=0, description="seed of the base model's train/test split of pairs"
    )

    @field_validator("p")
    @classmethod
    def _prime(cls, p: int) -> int:
        if p < 3 or not _is_prime(p):
            raise ValueError(f"must be a prime >= 3, got {p}")
        return p

    @field_validator("train_frac")
    @classmethod
    def _frac(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"must lie strictly between 0 and 1, got {v}")
        return v


class BaseModelConfig(Strict):
    """The HookedTransformer and its full-batch AdamW training (docs/design.md, "Task and base
    model")."""

    n_layers: int = Field(1, ge=1, le=2, description="transformer blocks (1 or 2)")
    d_model: int = Field(128, ge=8, description="residual stream width")
    n_heads: int = Field(4, ge=1, description="attention heads; d_head = d_model / n_heads")
    d_mlp: int = Field(512, ge=8, description="MLP hidden width")
    act_fn: Literal["relu", "gelu"] = Field("relu", description="MLP activation")
    layernorm: bool = Field(False, description="use LayerNorm (the default model has none)")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(1.0, ge=0, description="AdamW weight decay (drives grokking)")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas")
    max_steps: int = Field(30_000, ge=1, description="step budget of full-batch training")
    target_test_acc: float = Field(
        0.99, gt=0, le=1, description="stop once held-out accuracy reaches this"
    )
    eval_every: int = Field(50, ge=1, description="steps between logged curve points")
    init_seed: int = Field(0, ge=0, description="seed of the weight initialisation")

    @model_validator(mode="after")
    def _heads_divide(self) -> BaseModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: {self.n_heads} does not divide d_model {self.d_model}")
        return self

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


def hook_layer(hook: str | None) -> int | None:
    """The block index of a `blocks.<n>.` TransformerLens hook; None for any other (the
    embeddings, a user's rows)."""
    parts = (hook or "").split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else None


class ActivationsConfig(Strict):
    """Which activations the SAEs see and how they are split (docs/design.md, "Activations")."""

    hook: str = Field("blocks.0.hook_resid_post", description="TransformerLens hook name")
    position: int = Field(-1, ge=-3, le=2, description="token position; -1 is the '=' read-out")
    eval_frac: float = Field(0.2, description="share of rows held out for every SAE metric")
    split_seed: int = Field(0, ge=0, description="seed of the SAE-train / SAE-eval row split")
    ood_frac: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="top share of operand values held out: pairs with both a and b in it are "
        "the shifted (OOD) slice, never trained on; 0 = none",
    )

    @field_validator("eval_frac")
    @classmethod
    def _frac(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"must lie strictly between 0 and 1, got {v}")
        return v

    key: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{16}$",
        description="use an existing cached activation set by its key (16 hex digits) instead "
        "of extracting",
    )
    file: str | None = Field(
        None, description="bring your own [n, d_in] activations (.safetensors, .npy or .pt)"
    )

    source: Literal["task", "transformer_lens"] = Field(
        "task",
        description="task: the modular-addition base model; transformer_lens: a language "
        "model over a corpus (activations.lm)",
    )
    lm: LanguageModelSource | None = Field(
        None, description="the language model and corpus (activations.source: transformer_lens)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ActivationsConfig:
        if self.key is not None and self.file is not None:
            raise ValueError("key and file: give at most one activation source")
        if self.source == "transformer_lens":
            if self.lm is None:
                raise ValueError("lm: activations.source transformer_lens needs activations.lm")
            if self.file is not None:
                raise ValueError("file: give activations.file or source transformer_lens")
        elif self.lm is not None:
            raise ValueError("lm: set activations.source: transformer_lens to use it")
        return self


NullName = Literal["isotropic", "covariance", "surrogate", "random_base"]
REMOVED_TRIAL_FIELDS = ("bootstrap_samples", "bootstrap_seed")


class TrialConfig(Strict):
    """One recipe trained with several seeds, its stability scored against nulls."""

    seeds: tuple[int, ...] = Field((0, 1, 2, 3, 4), description="training seeds (at least 2)")
    random_seed_offset: int = Field(
        1_000_000,
        ge=1,
        description="seeds of the untrained and null dictionaries derive from seed + offset",
    )
    nulls: tuple[NullName, ...] = Field(
        ("isotropic", "covariance", "surrogate", "random_base"),
        description="nulls the trial is scored against, each with its own excess (surrogate: "
        "the calibrated one; isotropic and covariance: descriptive, untrained)",
    )
    register_sae: bool = Field(True, description="register the representative SAE as husai-sae")

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in REMOVED_TRIAL_FIELDS:
                if name in data:
                    raise ValueError(
                        f"{name}: removed in metric_version 3 (intervals are now a jackknife "
                        "over seeds with a t quantile; nothing is resampled): delete it"
                    )
        return data

    @field_validator("nulls")
    @classmethod
    def _distinct_nulls(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"each null at most once, got {list(v)}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) < 2 or len(set(v)) != len(v) or min(v) < 0:
            raise ValueError(f"need at least 2 distinct non-negative seeds, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _offset(self) -> TrialConfig:
        derived = {s + self.random_seed_offset for s in self.seeds} | set(self.surrogate_seeds())
        if set(self.seeds) & derived:
            raise ValueError(
                "random_seed_offset: the untrained or surrogate seeds (seed + offset, seed + 2 x "
                "offset) overlap the training seeds"
            )
        return self

    def null_seed(self, seed: int, null: str) -> int:
        """The seed of null `null`'s draw for trial seed `seed`: derived from the trial's own
        seed, so a trial on fresh seeds (a confirmation) gets fresh null draws."""
        return derived_seed(f"{null}:{seed + self.random_seed_offset}")

    def surrogate_seeds(self) -> tuple[int, ...]:
        """The surrogate null's SAE seeds (initialisation and data order), one per trial seed:
        seed + 2 x random_seed_offset, disjoint from the trial's and the untrained ones."""
        return tuple(s + 2 * self.random_seed_offset for s in self.seeds)

    def surrogate_rows_seed(self, part: str) -> int:
        """The seed of the surrogate's Gaussian twin rows of `part` (train, eval): one draw per
        trial, shared by its seeds as the real rows are, fresh for fresh seeds."""
        return derived_seed(f"surrogate_{part}:{list(self.seeds)}:{self.random_seed_offset}")


class EvalsConfig(Strict):
    """Stress tests and local evals on the trial's own SAEs (docs/metrics.md)."""

    transcoder: bool = Field(True, description="transcoders vs SAEs on the MLP input, same seeds")
    ood: bool = Field(True, description="recon and probe AUC on the held-out operand slice")
    probing: bool = Field(True, description="SAEBench-style sparse probing on (a, b, c) tasks")
    contrastive: bool = Field(True, description="CE-Bench-style contrastive/independence scores")
    probe_ks: tuple[int, ...] = Field((1, 2, 5), description="latents per sparse probe")


class ConsistencyConfig(Strict):
    """Pull every seed's decoder toward a frozen reference SAE (docs/design.md, "Consistency
    objective")."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    lam: float = Field(
        0.0, alias="lambda", ge=0, description="weight of the penalty; 0 trains the plain recipe"
    )
    ref_seed: int = Field(10_000, ge=0, description="seed of the reference SAE (not a trial seed)")
    assign_every: int = Field(
        50, ge=1, description="steps between refreshes of the Hungarian matching to the reference"
    )

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "control_ref_seed" in data:
            raise ValueError(
                "control_ref_seed: removed in metric_version 6 (the controls are now the lambda "
                "= 0 recipe's own seeds, at least min_seeds of them): delete it"
            )
        return data


class RuntimeConfig(Strict):
    """Where and how the work runs; never part of the recipe (not in `config_hash`): the same
    recipe on another device is the same experiment, and its runs record where they ran."""

    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="auto (a Ray trial's assigned GPU, else CUDA if present, else CPU), cpu, "
        "cuda or cuda:N",
    )
    deterministic: bool = Field(
        True,
        description="torch deterministic algorithms (and the cuBLAS workspace setting on "
        "CUDA): bit-identical reruns on the same machine, at some speed on GPU",
    )


class ExperimentConfig(Strict):
    """Everything one experiment needs; sections are filled in by later stages of the pipeline."""

    name: str = Field("custom", min_length=1, description="label for runs made from this config")
    task: TaskConfig = Field(default_factory=TaskConfig)
    base: BaseModelConfig = Field(default_factory=BaseModelConfig)
    activations: ActivationsConfig = Field(default_factory=ActivationsConfig)
    sae: SAEConfig = Field(default_factory=SAEConfig)
    train: SAETrainConfig = Field(default_factory=SAETrainConfig)
    trial: TrialConfig = Field(default_factory=TrialConfig)
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig)
    evals: EvalsConfig = Field(default_factory=EvalsConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _reference_is_not_a_trial_seed(self) -> ExperimentConfig:
        if self.consistency.ref_seed in self.trial.seeds:
            raise ValueError(
                f"consistency.ref_seed: {self.consistency.ref_seed} is one of trial.seeds; "
                "the reference must never be among the compared seeds"
            )
        return self

    def base_hash(self) -> str:
        """Identity of the base model: the task and the model/training settings, nothing else."""
        return stable_hash({"task": self.task, "base": self.base})

    def config_hash(self) -> str:
        """Identity of the experiment's result. Where the activations come from
        (activations.key/file) is left out: runs record it as their activation_key param."""
        data = self.model_dump(mode="json")
        del data["runtime"]
        data["train"] = self.train.identity()
        data["activations"] = {
            k: v for k, v in data["activations"].items() if k not in ("key", "file")
        }
        if self.activations.source == "task":
            # Left out for the task source, so hashes from before the LM source stay valid.
            for k in ("source", "lm"):
                data["activations"].pop(k)
        else:
            lm = self.activations.lm
            assert lm is not None  # the validator's promise
            data["activations"]["lm"] = lm.identity()
            # The task and the read-out position and shifted slice change nothing here.
            del data["task"]
            for k in ("position", "ood_frac"):
                data["activations"].pop(k)
        # Settings that cannot change the result: registration, and the reference settings of
        # a recipe that uses no reference (lambda = 0).
        data["trial"].pop("register_sae")
        if self.consistency.lam == 0:
            data["consistency"] = {"lam": 0.0}
        return stable_hash(data)
