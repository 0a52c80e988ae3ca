"""SAE training on cached activations: one seed, its own data order, a fixed step budget.

Our loop over sae-lens's `training_forward_pass`, mirroring `SAETrainer._train_step` (Adam,
gradient-norm clip 1.0, sae-lens's LR schedule and coefficient warm-ups, the dead-latent mask
that feeds the AuxK loss) so that every architecture's own auxiliary losses are kept. Chosen over
`SAETrainer` because SAETrainer logs nothing without wandb, cannot seed the data order, and was
slower when measured on this project's 2-core machine (42k vs 50k rows/s at d_sae 1024).
Returns curves; never logs.

Device: `train_sae` / `train_seeds` move their rows to the process's device
(`husai.core.device.active()`) once, before the first step; every tensor of the loop is made
there; the SAE is initialised on the CPU (the same weights on every device) and returned on the
CPU, so what is saved and measured afterwards does not depend on where it trained.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from husai import names
from husai.config.experiment import SAEConfig, SAETrainConfig
from husai.core import memory
from husai.core.repro import deterministic
from husai.model.rows import Rows, gather
from husai.sae.batched.train import batched_supported, train_members_batched, train_seeds_batched
from husai.sae.build import (
    TranscoderStepInput,
    build_sae,
    coefficient_schedulers,
    decoder,
    lr_scheduler,
)
from husai.sae.devices import autocast, on_active_device
from husai.sae.types import BatchOrder, Consistency, SAECurves, SeedStreams, TrainedSAE


def train_sae(
    sae_cfg: SAEConfig,
    train_cfg: SAETrainConfig,
    acts: Rows,
    seed: int,
    consistency: Consistency | None = None,
    progress: bool = False,
    target: torch.Tensor | None = None,
    label: str = "SAE",
) -> TrainedSAE:
    """Train one SAE on rows `acts` [n, d_in]; deterministic for a given seed on CPU. With
    `target` [n, d_out] (row i the target of input row i) it is trained as a transcoder."""
    if target is not None and target.shape[0] != acts.shape[0]:
        raise ValueError(f"target has {target.shape[0]} rows, inputs {acts.shape[0]}")
    acts, target = on_active_device(acts, target)
    with deterministic():
        return _train(
            sae_cfg, train_cfg, acts, SeedStreams.of(seed), consistency, progress, target, label
        )


def train_seeds(
    sae_cfg: SAEConfig,
    train_cfg: SAETrainConfig,
    acts: Rows,
    seeds: Sequence[int],
    progress: bool = False,
    target: torch.Tensor | None = None,
    label: str = "SAE",
    consistency: Sequence[Consistency] | None = None,
) -> Iterator[TrainedSAE]:
    """One SAE per seed, in seed order (`consistency`: one penalty per seed, as the penalty
    keeps per-seed state). All seeds at once on the seed-batched path (`husai.sae.batched`)
    when `train.seed_batched` and the architecture has one; otherwise each seed is trained when the
    caller asks for it, so a caller that stops early (an ASHA stop) trains no more."""
    memory.fixed_mmap_threshold()  # large step buffers mapped whole: no heap growth
    if consistency is not None and len(consistency) != len(seeds):
        raise ValueError(f"{len(consistency)} consistency penalties for {len(seeds)} seeds")
    acts, target = on_active_device(acts, target)
    if stacks(sae_cfg, train_cfg):
        yield from train_seeds_batched(
            sae_cfg, train_cfg, acts, seeds, progress, target, label, consistency
        )
        return
    for i, seed in enumerate(seeds):
        pull = None if consistency is None else consistency[i]
        yield train_sae(sae_cfg, train_cfg, acts, seed, pull, progress, target, label)


def stacks(sae_cfg: SAEConfig, train_cfg: SAETrainConfig) -> bool:
    """Whether SAEs of this recipe train in one stack (`train_members`' single pass)."""
    return train_cfg.seed_batched and batched_supported(sae_cfg)


def train_members(
    sae_cfg: SAEConfig,
    train_cfg: SAETrainConfig,
    rows: Sequence[Rows],
    seeds: Sequence[int],
    progress: bool = False,
    label: str = "SAE",
    consistency: Sequence[Consistency | None] | None = None,
    ks: Sequence[int] | None = None,
) -> list[TrainedSAE]:
    """One SAE per member, each on its own rows (`rows[i]`, in memory), seed, penalty and k
    (`ks[i]`; None: `sae_cfg.k`): a trial's seeds and its trained nulls, or a bundle of grid
    points that differ only in k, in one stack where the recipe `stacks`, else one after
    another. Each equals training it alone."""
    memory.fixed_mmap_threshold()
    if stacks(sae_cfg, train_cfg):
        return train_members_batched(
            sae_cfg, train_cfg, rows, seeds, progress, label, consistency, ks
        )
    pulls = consistency or [None] * len(seeds)
    each = [sae_cfg.k] * len(seeds) if ks is None else ks
    return [
        train_sae(sae_cfg.model_copy(update={"k": k}), train_cfg, r, s, pull, progress, label=label)
        for r, s, pull, k in zip(rows, seeds, pulls, each, strict=True)
    ]


def _train(
    sae_cfg: SAEConfig,
    cfg: SAETrainConfig,
    acts: Rows,
    streams: SeedStreams,
    consistency: Consistency | None,
    progress: bool,
    target: torch.Tensor | None,
    label: str = "SAE",
) -> TrainedSAE:
    dev = acts.device
    sae = build_sae(
        sae_cfg,
        int(acts.shape[1]),
        streams.init_seed,
        consistency,
        transcoder=target is not None,
        device=dev,
    )
    w0 = decoder(sae).cpu()
    order = BatchOrder(int(acts.shape[0]), cfg.batch_size, streams.data_seed)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.betas)
    sched = lr_scheduler(opt, cfg)
    coeffs = coefficient_schedulers(sae)
    since_fired = torch.zeros(sae_cfg.d_sae, device=dev)
    curves = SAECurves()
    sae.train()
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"{label} seed {streams.seed}", disable=not progress)
    for step in bar:
        dead = since_fired > cfg.dead_window
        idx = order.next().to(dev)
        step_input = TranscoderStepInput(
            sae_in=gather(acts, idx),
            coefficients={k: s.value for k, s in coeffs.items()},
            dead_neuron_mask=dead,
            n_training_steps=step,
            is_logging_step=False,
            target=None if target is None else target[idx],
        )
        with autocast(dev, cfg):
            out = sae.training_forward_pass(step_input)
        loss, losses = out.loss, out.losses
        with torch.no_grad():
            fired = (out.feature_acts != 0).any(dim=0)
            since_fired += 1
            since_fired[fired] = 0
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        for s in coeffs.values():
            s.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {
                names.CURVE_LOSS: loss.item(),
                names.CURVE_L0: (out.feature_acts != 0).float().sum(-1).mean().item(),
                names.CURVE_DEAD_FRAC: (since_fired > cfg.dead_window).float().mean().item(),
                names.CURVE_LR: opt.param_groups[0]["lr"],
            }
            # sae-lens names its terms mse_loss, auxiliary_reconstruction_loss, l1_loss, ...
            row.update(
                {(names.CURVE_MSE if k == "mse_loss" else k): v.item() for k, v in losses.items()}
            )
            curves.add(step, row)
            bar.set_postfix(loss=f"{row[names.CURVE_LOSS]:.4g}", l0=f"{row[names.CURVE_L0]:.1f}")
    sae.eval()
    if dev.type != "cpu":
        sae = sae.to("cpu")
    return TrainedSAE(
        seed=streams.seed,
        sae=sae,
        decoder_step0=w0,
        curves=curves,
        seconds=time.perf_counter() - start,
    )
