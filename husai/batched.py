"""Seed-batched TopK / BatchTopK training: all of a trial's seeds as one stacked model.

Trained one after another through sae-lens, a seed's step is bound by memory traffic: it writes
and re-reads a dense [batch, d_sae] pre-activation tensor several times (matmul, rescale,
top-k, scatter, backward through the scatter). Here the seeds' parameters are stacked
[S, ...]; each step gathers every seed's own batch (its own `BatchOrder`, as in `train.py`),
computes pre-activations in row chunks small enough to stay in cache and selects the top-k
there, decodes sparsely (`embedding_bag` over the k chosen rows of W_dec) and writes the
gradients by hand, all sparse except the encoder matmul itself. Adam is elementwise, so one
Adam over stacked tensors is S independent Adams; gradient-norm clipping is per seed.

It is sae-lens's `TopKTrainingSAE` / `BatchTopKTrainingSAE` step (rescale_acts_by_decoder_norm,
AuxK on dead latents, BatchTopK's threshold EMA) in exact arithmetic: selection on
(x - b_dec) @ W_enc * |W_dec| + b_enc * |W_dec|, values relu(pre), reconstruction
sum relu(pre_j) W_dec[j] + b_dec (the decoder norm cancels, as it does in sae-lens). The
gradient of |W_dec| through that product is exactly zero and is left out. tests/test_batched.py
checks the match with sae-lens's own training step at float tolerance. Each seed ends as an
ordinary sae-lens SAE (the weights are copied into `build_sae`'s module), so saving, loading
and every metric are unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from husai import names
from husai.config import SAEConfig, SAETrainConfig
from husai.repro import deterministic
from husai.sae import build_sae, decoder, lr_scheduler
from husai.train import BatchOrder, SAECurves, SeedStreams, TrainedSAE

BATCHED_ARCHITECTURES = ("topk", "batchtopk")
# Rows per pre-activation chunk: 128 x 4096 floats (2 MiB) stays in cache on this machine.
CHUNK_ELEMENTS = 1 << 19
# BatchTopK keeps this many candidates per row (x k) before its batch-wide selection; a row
# that could hold more of the batch's top values is recomputed in full (exact either way).
BATCHTOPK_CANDIDATES = 4


def batched_supported(sae_cfg: SAEConfig) -> bool:
    return sae_cfg.architecture in BATCHED_ARCHITECTURES


class _Stack:
    """The S seeds' parameters, stacked, with one Adam and sae-lens's LR schedule."""

    def __init__(self, saes: list[Any], cfg: SAETrainConfig) -> None:
        def stack(name: str) -> torch.Tensor:
            return torch.stack([getattr(s, name).detach().clone() for s in saes]).contiguous()

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


def _select(
    sae_in: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    norm: torch.Tensor,
    arch: str,
    k: int,
    dead: torch.Tensor | None,
    k_aux: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One seed's chosen latents: (ids, pre) of the main activation and (ids, pre) of AuxK's
    top-k_aux dead latents, pre being the unscaled pre-activation (sae_in @ W_enc + b_enc).

    Scores (pre * |W_dec|, what sae-lens ranks) are computed in row chunks that stay in cache.
    TopK keeps each row's k best; BatchTopK keeps each row's m best relu'd scores as candidates
    for its batch-wide selection (`_batch_wide`).
    """
    n, d_sae = sae_in.shape[0], w.shape[1]
    m = k if arch == "topk" else min(d_sae, BATCHTOPK_CANDIDATES * k)
    chunk = max(1, CHUNK_ELEMENTS // d_sae)
    ids = torch.empty(n, m, dtype=torch.long)
    scores = torch.empty(n, m)
    aux_ids = aux_scores = None
    if dead is not None:
        dead_idx = dead.nonzero().squeeze(1)
        aux_ids = torch.empty(n, k_aux, dtype=torch.long)
        aux_scores = torch.empty(n, k_aux)
    for i in range(0, n, chunk):
        sc = torch.addmm(b, sae_in[i : i + chunk], w)
        torch.topk(sc, m, dim=-1, sorted=False, out=(scores[i : i + chunk], ids[i : i + chunk]))
        if aux_ids is not None and aux_scores is not None:
            v, j = sc.index_select(1, dead_idx).topk(k_aux, dim=-1, sorted=False)
            aux_scores[i : i + chunk], aux_ids[i : i + chunk] = v, dead_idx[j]
    if arch == "batchtopk":
        ids, scores = _batch_wide(sae_in, w, b, ids, scores.relu_(), k)
    aux_pre = None if aux_ids is None or aux_scores is None else aux_scores / norm[aux_ids]
    return ids, scores / norm[ids], aux_ids, aux_pre


def _batch_wide(
    sae_in: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    ids: torch.Tensor,
    scores: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sae-lens BatchTopK: the batch's k x n largest relu'd scores, as rows padded with zeros."""
    n, m = scores.shape
    d_sae = w.shape[1]
    total = k * n
    threshold = scores.flatten().topk(total, sorted=True).values[-1]
    low = scores.min(dim=1).values
    # A row whose smallest candidate is positive and reaches the threshold may hold more of
    # the batch's top values than it kept: recompute it whole (rare; exact either way).
    full = (low >= threshold) & (low > 0) if m < d_sae else torch.zeros(n, dtype=torch.bool)
    if bool(full.any()):
        rows = full.nonzero().squeeze(1)
        sc = torch.addmm(b, sae_in[rows], w).relu_()
        ids = torch.cat([ids, torch.zeros(n, d_sae - m, dtype=torch.long)], 1)
        scores = torch.cat([scores, torch.zeros(n, d_sae - m)], 1)
        ids[rows] = torch.arange(d_sae).expand(len(rows), d_sae)
        scores[rows] = sc
    flat = scores.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(total, sorted=False).indices] = True
    return ids, torch.where(keep.view_as(scores), scores, torch.zeros(()))


def _decode(
    ids: torch.Tensor, weights: torch.Tensor, w_dec: torch.Tensor, grad_out: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """sum_j weights[b, j] W_dec[ids[b, j]] for every seed at once; with `grad_out`, also the
    gradients w.r.t. the weights and W_dec (embedding_bag's own sparse backward)."""
    s, bsz, k = ids.shape
    d_sae, d_in = w_dec.shape[1], w_dec.shape[2]
    flat = (ids + torch.arange(s).view(s, 1, 1) * d_sae).view(s * bsz, k)
    table = w_dec.view(s * d_sae, d_in)
    if grad_out is None:
        out = F.embedding_bag(flat, table, per_sample_weights=weights.reshape(-1, k), mode="sum")
        return out.view(s, bsz, d_in), None, None
    with torch.enable_grad():
        wt = weights.reshape(-1, k).detach().requires_grad_(True)
        tb = table.detach().requires_grad_(True)
        out = F.embedding_bag(flat, tb, per_sample_weights=wt, mode="sum")
        g_w, g_t = torch.autograd.grad(out, (wt, tb), grad_out.reshape(-1, d_in))
    return out.detach().view(s, bsz, d_in), g_w.view(s, bsz, k), g_t.view(s, d_sae, d_in)


def _entries(ids: torch.Tensor, g: torch.Tensor, seed: int, d_sae: int) -> tuple[torch.Tensor, ...]:
    """One seed's sparse dL/dpre [B, k] at latents `ids` as (latent row, batch column, value)
    of the stacked [S * d_sae, S * B] gradient matrix."""
    bsz, k = ids.shape
    rows = (ids + seed * d_sae).reshape(-1)
    cols = (torch.arange(bsz) + seed * bsz).repeat_interleave(k)
    return rows, cols, g.reshape(-1)


def _encoder_grads(
    sae_in: torch.Tensor, entries: list[tuple[torch.Tensor, ...]], d_sae: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dW_enc [S, d_in, d_sae] and dL/db_enc [S, d_sae] from the sparse dL/dpre entries."""
    s, bsz, d_in = sae_in.shape
    r = torch.cat([e[0] for e in entries])
    c = torch.cat([e[1] for e in entries])
    v = torch.cat([e[2] for e in entries])
    # Indices are built here, in range by construction: skip the invariant check.
    g_mat = torch.sparse_coo_tensor(
        torch.stack([r, c]), v, (s * d_sae, s * bsz), check_invariants=False
    )
    g_w = torch.sparse.mm(g_mat, sae_in.reshape(s * bsz, d_in)).view(s, d_sae, d_in)
    g_b = torch.zeros(s * d_sae).index_add_(0, r, v).view(s, d_sae)
    return g_w.transpose(1, 2).contiguous(), g_b


def train_seeds_batched(
    sae_cfg: SAEConfig,
    cfg: SAETrainConfig,
    acts: torch.Tensor,
    seeds: Sequence[int],
    progress: bool = False,
    target: torch.Tensor | None = None,
    label: str = "SAE",
) -> list[TrainedSAE]:
    """Train one SAE per seed, all at once; deterministic for given seeds on CPU."""
    if not batched_supported(sae_cfg):
        raise ValueError(f"no seed-batched path for architecture {sae_cfg.architecture!r}")
    if target is not None and target.shape != acts.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != input {tuple(acts.shape)}")
    with deterministic():
        return _train(sae_cfg, cfg, acts, seeds, progress, target, label)


def _train(
    sae_cfg: SAEConfig,
    cfg: SAETrainConfig,
    acts: torch.Tensor,
    seeds: Sequence[int],
    progress: bool,
    target: torch.Tensor | None,
    label: str,
) -> list[TrainedSAE]:
    streams = [SeedStreams.of(s) for s in seeds]
    d_in, transcoder = int(acts.shape[1]), target is not None
    saes = [build_sae(sae_cfg, d_in, st.init_seed, transcoder=transcoder) for st in streams]
    w0 = [decoder(sae) for sae in saes]
    p = _Stack(saes, cfg)
    orders = [BatchOrder(int(acts.shape[0]), cfg.batch_size, st.data_seed) for st in streams]
    n_seeds, d_sae, k, bsz = len(seeds), sae_cfg.d_sae, sae_cfg.k, cfg.batch_size
    aux_coeff = sae_cfg.aux_loss_coefficient
    b_dec_in = saes[0].cfg.apply_b_dec_to_input
    threshold_lr = getattr(saes[0].cfg, "topk_threshold_lr", 0.0)
    thresholds = torch.zeros(n_seeds, dtype=torch.double)
    since_fired = torch.zeros(n_seeds, d_sae)
    curves = [SAECurves() for _ in seeds]
    k_aux_full = d_in // 2  # sae-lens: half the input width
    start = time.perf_counter()
    seeds_txt = ",".join(str(s) for s in seeds)
    bar = tqdm(range(cfg.steps), desc=f"{label} seeds {seeds_txt}", disable=not progress)
    for step in bar:
        dead = since_fired > cfg.dead_window
        idx = torch.stack([o.next() for o in orders])  # [S, B]
        x = acts[idx]
        y = x if target is None else target[idx]
        sae_in = x - p.b_dec[:, None, :] if b_dec_in else x
        norm = p.W_dec.norm(dim=-1)  # [S, d_sae]
        w_s, b_s = p.W_enc * norm[:, None, :], p.b_enc * norm
        n_dead = dead.sum(1).tolist()
        sel = [
            _select(
                sae_in[s],
                w_s[s],
                b_s[s],
                norm[s],
                sae_cfg.architecture,
                k,
                dead[s] if n_dead[s] else None,
                min(k_aux_full, n_dead[s]),
            )  # fmt: skip
            for s in range(n_seeds)
        ]
        # BatchTopK rows keep different numbers of latents: pad to one width (weight 0).
        width = max(t[0].shape[1] for t in sel)
        ids = torch.stack([F.pad(t[0], (0, width - t[0].shape[1])) for t in sel])
        pre = torch.stack([F.pad(t[1], (0, width - t[1].shape[1])) for t in sel])
        act = pre.relu()
        out = _decode(ids, act, p.W_dec, None)[0] + p.b_dec[:, None, :]
        resid = out - y
        mse = resid.pow(2).sum(-1).mean(1)  # [S]
        g_out = 2.0 * resid / bsz
        _, g_act, g_wdec = _decode(ids, act, p.W_dec, g_out)
        assert g_act is not None and g_wdec is not None
        g_pre = g_act * (pre > 0)
        entries = [_entries(ids[s], g_pre[s], s, d_sae) for s in range(n_seeds)]
        aux_loss = torch.zeros(n_seeds)
        for s, (_, _, a_ids, a_pre) in enumerate(sel):
            if a_ids is None or a_pre is None:
                continue
            # AuxK (sae-lens calculate_topk_aux_loss): dead latents predict the residual.
            scale = min(n_dead[s] / k_aux_full, 1.0)
            w_dec_s = p.W_dec[s : s + 1]
            diff = _decode(a_ids[None], a_pre[None], w_dec_s, None)[0][0] + resid[s]
            aux_loss[s] = aux_coeff * scale * diff.pow(2).sum(-1).mean()
            g_rec = (2.0 * aux_coeff * scale / bsz) * diff
            _, g_a, g_w = _decode(a_ids[None], a_pre[None], w_dec_s, g_rec[None])
            assert g_a is not None and g_w is not None
            g_wdec[s] += g_w[0]
            entries.append(_entries(a_ids, g_a[0], s, d_sae))
        g_wenc, g_benc = _encoder_grads(sae_in, entries, d_sae)
        g_bdec = g_out.sum(1)
        if b_dec_in:  # sae_in = x - b_dec feeds the encoder too
            g_bdec = g_bdec - torch.einsum("sdf,sf->sd", p.W_enc, g_benc)
        fired = torch.zeros(n_seeds, d_sae).scatter_add_(
            1, ids.flatten(1), (act > 0).flatten(1).float()
        )
        p.step([g_wenc, g_benc, g_wdec, g_bdec])
        since_fired += 1
        since_fired[fired > 0] = 0
        if threshold_lr:
            # sae-lens update_topk_threshold: EMA of the smallest positive activation (x |W_dec|).
            for s in range(n_seeds):
                pos = act[s][act[s] > 0]
                if pos.numel():
                    scaled = (pos * norm[s][ids[s][act[s] > 0]]).min().double()
                    thresholds[s] = (1 - threshold_lr) * thresholds[s] + threshold_lr * scaled
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            l0 = (act > 0).float().sum(-1).mean(1)
            dead_frac = (since_fired > cfg.dead_window).float().mean(1)
            lr = p.opt.param_groups[0]["lr"]
            for s in range(n_seeds):
                row = {
                    names.CURVE_LOSS: float(mse[s] + aux_loss[s]),
                    names.CURVE_L0: float(l0[s]),
                    names.CURVE_DEAD_FRAC: float(dead_frac[s]),
                    names.CURVE_LR: lr,
                    names.CURVE_MSE: float(mse[s]),
                    "auxiliary_reconstruction_loss": float(aux_loss[s]),
                }
                curves[s].add(step, row)
            bar.set_postfix(loss=f"{float((mse + aux_loss).mean()):.4g}")
    seconds = time.perf_counter() - start
    trained: list[TrainedSAE] = []
    for s, sae in enumerate(saes):
        with torch.no_grad():
            sae.W_enc.copy_(p.W_enc[s])
            sae.b_enc.copy_(p.b_enc[s])
            sae.W_dec.copy_(p.W_dec[s])
            sae.b_dec.copy_(p.b_dec[s])
            if threshold_lr:
                sae.topk_threshold = thresholds[s].clone()
        sae.eval()
        # The seeds shared one run: each is credited an equal share of its wall time.
        trained.append(TrainedSAE(streams[s].seed, sae, w0[s], curves[s], seconds / n_seeds))
    return trained
