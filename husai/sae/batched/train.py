"""Seed-batched TopK / BatchTopK training: all of a trial's seeds as one stacked model.

Trained one after another through sae-lens, a seed's step writes and re-reads a dense
[batch, d_sae] pre-activation tensor several times (matmul, rescale, top-k, scatter, backward
through the scatter) and pays Python overhead per seed. Here the seeds' parameters are stacked
[S, ...]; each step gathers every seed's own batch (its own `BatchOrder` and initialisation, as
in `train.py`) and runs `batched.sparse.sparse_step` for all of them: scores ranked in one
batched matmul or, for large SAEs, in cache-sized chunks; a sparse decode; hand-written sparse
gradients. Adam is elementwise, so one Adam over stacked tensors is S independent Adams;
gradient-norm clipping is per seed.

It is sae-lens's `TopKTrainingSAE` / `BatchTopKTrainingSAE` step (rescale_acts_by_decoder_norm,
AuxK on dead latents, BatchTopK's threshold EMA) in exact arithmetic: latents ranked by
pre * |W_dec| with pre = (x - b_dec) @ W_enc + b_enc, values relu(pre), reconstruction
sum relu(pre_j) W_dec[j] + b_dec (the decoder norm cancels, as it does in sae-lens, and its
gradient through that product is exactly zero, so it is left out). tests/sae/test_batched.py checks
it against sae-lens's own step at float tolerance. Each seed ends as an ordinary sae-lens SAE
(the weights are copied into `build_sae`'s module), so saving, loading and metrics are unchanged.

Members need not share rows: `train_members_batched` stacks a trial's seeds with its trained
nulls' seeds (the surrogate's Gaussian twin, the random base model's rows), the rows pooled
once and each member drawing its batches from its own part; each equals training it alone.

Device: the stacked parameters, Adam's state and every per-step tensor live on the device of
`acts` (moved there once by `husai.sae.train.train_seeds`); the seeds' sae-lens modules stay on
the CPU, initialised there, and receive the trained weights at the end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from husai import names
from husai.config.experiment import SAEConfig, SAETrainConfig
from husai.core.repro import deterministic
from husai.model.rows import Rows, gather
from husai.sae.batched.sparse import sparse_step
from husai.sae.build import build_sae, decoder, lr_scheduler
from husai.sae.devices import on_active_device
from husai.sae.types import BatchOrder, Consistency, SAECurves, SeedStreams, TrainedSAE

BATCHED_ARCHITECTURES = ("topk", "batchtopk")


def batched_supported(sae_cfg: SAEConfig) -> bool:
    return sae_cfg.architecture in BATCHED_ARCHITECTURES


def static_step(device: torch.device) -> bool:
    """Whether steps run with fixed shapes and no host reads (`batched.sparse.sparse_step`'s
    `static`): on CUDA, where each read waits for the GPU's queue to drain. The CPU keeps the
    data-sized step, which skips work that the fixed widths would do for nothing. Reads that
    remain by design: the logged steps' curves, and the consistency term's matching (scipy, on
    the CPU) every `assign_every` steps."""
    return device.type == "cuda"


def _next_batch(
    orders: list[BatchOrder], dev: torch.device, offsets: torch.Tensor | None = None
) -> torch.Tensor:
    """Every seed's next batch of row ids [S, B] on `dev` (`offsets` [S]: where each member's
    rows start in the pooled rows); to a GPU from pinned memory, asynchronously (a pageable
    copy would wait)."""
    idx = torch.stack([o.next() for o in orders])
    if offsets is not None:
        idx += offsets[:, None]
    if dev.type != "cuda":
        return idx
    return idx.pin_memory().to(dev, non_blocking=True)


class _Stack:
    """The S seeds' parameters, stacked, with one Adam and sae-lens's LR schedule."""

    def __init__(self, saes: list[Any], cfg: SAETrainConfig, device: torch.device) -> None:
        def stack(name: str) -> torch.Tensor:
            w = torch.stack([getattr(s, name).detach().clone() for s in saes]).contiguous()
            return w.to(device)

        self.W_enc = stack("W_enc")  # [S, d_in, d_sae]
        self.b_enc = stack("b_enc")  # [S, d_sae]
        self.W_dec = stack("W_dec")  # [S, d_sae, d_in]
        self.b_dec = stack("b_dec")  # [S, d_in]
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, betas=cfg.betas)
        self.sched = lr_scheduler(self.opt, cfg)

    def step(self, grads: list[torch.Tensor]) -> None:
        # torch.nn.utils.clip_grad_norm_(max_norm=1.0), one norm per seed.
        norms = torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads))  # type: ignore[arg-type]
        coef = (1.0 / (norms + 1e-6)).clamp(max=1.0)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g * coef.view(-1, *([1] * (g.dim() - 1)))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()


def train_seeds_batched(
    sae_cfg: SAEConfig,
    cfg: SAETrainConfig,
    acts: Rows,
    seeds: Sequence[int],
    progress: bool = False,
    target: torch.Tensor | None = None,
    label: str = "SAE",
    consistency: Sequence[Consistency] | None = None,
) -> list[TrainedSAE]:
    """Train one SAE per seed, all at once; deterministic for given seeds on CPU."""
    if not batched_supported(sae_cfg):
        raise ValueError(f"no seed-batched path for architecture {sae_cfg.architecture!r}")
    if target is not None and target.shape != acts.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != input {tuple(acts.shape)}")
    acts, target = on_active_device(acts, target)
    with deterministic():
        pool = _Pool.of([acts] * len(seeds))
        return _train(sae_cfg, cfg, pool, seeds, progress, target, label, consistency)


def train_members_batched(
    sae_cfg: SAEConfig,
    cfg: SAETrainConfig,
    rows: Sequence[Rows],
    seeds: Sequence[int],
    progress: bool = False,
    label: str = "SAE",
    consistency: Sequence[Consistency | None] | None = None,
    ks: Sequence[int] | None = None,
) -> list[TrainedSAE]:
    """One SAE per member (`rows[i]`, `seeds[i]`, `consistency[i]`, `ks[i]`: its own rows,
    seed, penalty and k; None: `sae_cfg.k`), all in one stack; each equals training it alone
    (`train_seeds_batched` on its rows, at its k): its own batches, initialisation and Adam,
    with the members' rows pooled once."""
    if not batched_supported(sae_cfg):
        raise ValueError(f"no seed-batched path for architecture {sae_cfg.architecture!r}")
    n = len(seeds)
    if (
        len(rows) != n
        or (consistency is not None and len(consistency) != n)
        or (ks is not None and len(ks) != n)
    ):
        raise ValueError(f"{n} members: one rows, seed (and penalty, and k) each")
    moved = {id(r): on_active_device(r, None)[0] for r in rows}
    pool = _Pool.of([moved[id(r)] for r in rows])
    with deterministic():
        return _train(sae_cfg, cfg, pool, seeds, progress, None, label, consistency, ks)


class _Pool:
    """The rows every member trains on: one tensor (members with their own rows pooled, each
    with its offset), or the one set all share (which may stay lazy); each member's row count."""

    def __init__(self, rows: Rows, offsets: torch.Tensor | None, n_rows: list[int]) -> None:
        self.rows, self.offsets, self.n_rows = rows, offsets, n_rows

    @classmethod
    def of(cls, members: Sequence[Rows]) -> _Pool:
        unique = list({id(r): r for r in members}.values())
        if len(unique) == 1:
            return cls(unique[0], None, [int(unique[0].shape[0])] * len(members))
        start, at, tensors = 0, {}, []
        for r in unique:
            if not isinstance(r, torch.Tensor):
                raise ValueError("members with rows of their own need them in memory")
            at[id(r)], start = start, start + int(r.shape[0])
            tensors.append(r)
        offsets = torch.tensor([at[id(r)] for r in members], dtype=torch.long)
        return cls(torch.cat(tensors), offsets, [int(r.shape[0]) for r in members])


def _train(
    sae_cfg: SAEConfig,
    cfg: SAETrainConfig,
    pool: _Pool,
    seeds: Sequence[int],
    progress: bool,
    target: torch.Tensor | None,
    label: str,
    consistency: Sequence[Consistency | None] | None,
    ks: Sequence[int] | None = None,
) -> list[TrainedSAE]:
    acts = pool.rows
    streams = [SeedStreams.of(s) for s in seeds]
    d_in, transcoder = int(acts.shape[1]), target is not None
    ks = [sae_cfg.k] * len(seeds) if ks is None else list(ks)
    # Each member's module carries its own k, so what is saved and measured is its recipe.
    saes = [
        build_sae(sae_cfg.model_copy(update={"k": kk}), d_in, st.init_seed, transcoder=transcoder)
        for kk, st in zip(ks, streams, strict=True)
    ]
    w0 = [decoder(sae) for sae in saes]
    dev = acts.device
    p = _Stack(saes, cfg, dev)
    dense_grads = dev.type == "cuda"  # see husai.sae.batched.sparse
    # On the CPU each step decodes sparse or dense by the measured crossover (None: the rule
    # in batched.sparse); on CUDA the sparse decode stays, what was measured bit-reproducible
    # on a GPU, until the crossover is measured there too.
    dense_decode = None if dev.type == "cpu" else False
    static = static_step(dev)
    mm_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    orders = [
        BatchOrder(n, cfg.batch_size, st.data_seed)
        for n, st in zip(pool.n_rows, streams, strict=True)
    ]
    offsets = None if pool.offsets is None else pool.offsets.to(dev)
    n_seeds, d_sae = len(seeds), sae_cfg.d_sae
    k: int | list[int] = ks[0] if len(set(ks)) == 1 else ks
    aux_coeff = sae_cfg.aux_loss_coefficient
    c = saes[0].cfg
    b_dec_in = c.apply_b_dec_to_input
    if not c.rescale_acts_by_decoder_norm or c.normalize_activations != "none":
        # The step below is written for sae-lens's defaults of these; anything else is not it.
        raise ValueError("the batched path needs rescale_acts_by_decoder_norm and no normalisation")
    if coeffs := saes[0].get_coefficients():
        raise ValueError(f"the batched path has no loss coefficients, got {sorted(coeffs)}")
    threshold_lr = getattr(c, "topk_threshold_lr", 0.0)  # BatchTopK's threshold EMA
    thresholds = torch.zeros(n_seeds, dtype=torch.double, device=dev)
    since_fired = torch.zeros(n_seeds, d_sae, device=dev)
    curves = [SAECurves() for _ in seeds]
    start = time.perf_counter()
    seeds_txt = ",".join(str(s) for s in seeds)
    bar = tqdm(range(cfg.steps), desc=f"{label} seeds {seeds_txt}", disable=not progress)
    for step in bar:
        dead = since_fired > cfg.dead_window
        idx = _next_batch(orders, dev, offsets)
        x = gather(acts, idx)
        y = x if target is None else target[idx]
        sae_in = x - p.b_dec[:, None, :] if b_dec_in else x
        out = sparse_step(
            p.params,
            sae_in,
            y,
            dead,
            sae_cfg.architecture,
            k,
            aux_coeff,
            b_dec_in,
            dense_grads,
            mm_dtype,
            dense_decode,
            static,
            dead_possible=step > cfg.dead_window,  # since_fired <= step so far
        )
        pull = torch.zeros(n_seeds, device=dev)
        for s, member_pull in enumerate(consistency or ()):
            if member_pull is None:  # a member trained without the term (a null)
                continue
            penalty, lam = member_pull
            # The consistency extension's term (build._ConsistencyMixin), seed by seed.
            with torch.enable_grad():
                w = p.W_dec[s].detach().requires_grad_(True)
                term = lam * penalty(w, step)
                out.grads[2][s] += torch.autograd.grad(term, w)[0]
            pull[s] = term.detach()
        p.step(out.grads)
        since_fired += 1
        since_fired.masked_fill_(out.fired, 0)
        if threshold_lr:
            # sae-lens update_topk_threshold: EMA of the smallest positive activation.
            seen = ~torch.isnan(out.min_active)
            new = (1 - threshold_lr) * thresholds + threshold_lr * out.min_active.double()
            thresholds = torch.where(seen, new, thresholds)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            loss = out.mse + out.aux + pull
            dead_frac = (since_fired > cfg.dead_window).float().mean(1)
            # One read back to the host per logged step (each read waits for a GPU's queue).
            values = torch.stack([loss, out.l0, dead_frac, out.mse, out.aux, pull]).tolist()
            lr = p.opt.param_groups[0]["lr"]
            for s in range(n_seeds):
                row = {
                    names.CURVE_LOSS: values[0][s],
                    names.CURVE_L0: values[1][s],
                    names.CURVE_DEAD_FRAC: values[2][s],
                    names.CURVE_LR: lr,
                    names.CURVE_MSE: values[3][s],
                    names.CURVE_AUXK: values[4][s],
                }
                if consistency is not None and consistency[s] is not None:
                    row[names.CURVE_CONSISTENCY] = values[5][s]
                curves[s].add(step, row)
            bar.set_postfix(loss=f"{sum(values[0]) / n_seeds:.4g}")
    seconds = time.perf_counter() - start
    trained: list[TrainedSAE] = []
    for s, sae in enumerate(saes):
        with torch.no_grad():
            sae.W_enc.copy_(p.W_enc[s])
            sae.b_enc.copy_(p.b_enc[s])
            sae.W_dec.copy_(p.W_dec[s])
            sae.b_dec.copy_(p.b_dec[s])
            if threshold_lr:
                sae.topk_threshold = thresholds[s].cpu().clone()
        sae.eval()
        # The seeds shared one run: each is credited an equal share of its wall time.
        trained.append(TrainedSAE(streams[s].seed, sae, w0[s], curves[s], seconds / n_seeds))
    return trained
