"""Sparse kernels of the seed-batched path (`husai.batched`) for large SAEs.

Where a [seeds, batch, d_sae] tensor is too big to pass through memory cheaply, one step is:
pre-activations computed and ranked in row chunks that stay in cache (`_select`), a sparse
decode over the k chosen rows of W_dec (`_decode`, `embedding_bag`), and hand-written sparse
gradients (`sparse_step`): dL/dpre exists only at the chosen latents, so dW_enc is one sparse
matrix product and dW_dec comes from `embedding_bag`'s own backward. The math, term by term,
is sae-lens's TopK / BatchTopK training step; see `husai/batched.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Rows per pre-activation chunk: 128 x 4096 floats (2 MiB) stays in cache on this machine.
CHUNK_ELEMENTS = 1 << 19
# Up to this many S x batch x d_sae elements (16 MiB) all seeds are scored in one matmul.
WHOLE_MAX_ELEMENTS = 1 << 22
# BatchTopK keeps this many candidates per row (x k) before its batch-wide selection; a row
# that could hold more of the batch's top values is recomputed in full (exact either way).
BATCHTOPK_CANDIDATES = 4


@dataclass
class StepOut:
    """What one batched step tells the driver, every field per seed."""

    mse: torch.Tensor  # [S]
    aux: torch.Tensor  # [S] AuxK loss (0 without dead latents)
    grads: list[torch.Tensor]  # dL/d(W_enc, b_enc, W_dec, b_dec), stacked
    fired: torch.Tensor  # [S, d_sae] bool: latent active on some row
    l0: torch.Tensor  # [S] mean active latents per row
    min_active: torch.Tensor  # [S] smallest positive activation x |W_dec| (nan: none)


def _select_chunked(
    sae_in: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    m: int,
    dead: torch.Tensor,
    k_aux: int,
) -> tuple[torch.Tensor, ...]:
    """One seed, in row chunks that stay in cache: each row's m best scores (ids, scores) and
    its k_aux best among `dead` latents (ids, scores; empty when k_aux is 0)."""
    n, d_sae = sae_in.shape[0], w.shape[1]
    chunk = max(1, CHUNK_ELEMENTS // d_sae)
    ids = torch.empty(n, m, dtype=torch.long)
    scores = torch.empty(n, m)
    aux_ids = torch.empty(n, k_aux, dtype=torch.long)
    aux_scores = torch.empty(n, k_aux)
    dead_idx = dead.nonzero().squeeze(1)
    for i in range(0, n, chunk):
        sc = torch.addmm(b, sae_in[i : i + chunk], w)
        torch.topk(sc, m, dim=-1, sorted=False, out=(scores[i : i + chunk], ids[i : i + chunk]))
        if k_aux:
            v, j = sc.index_select(1, dead_idx).topk(k_aux, dim=-1, sorted=False)
            aux_scores[i : i + chunk], aux_ids[i : i + chunk] = v, dead_idx[j]
    return ids, scores, aux_ids, aux_scores


@dataclass
class Selection:
    """The latents one step uses, every seed padded to one width (padding has weight 0)."""

    ids: torch.Tensor  # [S, B, m] main activation
    pre: torch.Tensor  # [S, B, m] its unscaled pre-activations (sae_in @ W_enc + b_enc)
    aux_ids: torch.Tensor  # [S, B, k_aux] AuxK's dead latents (k_aux may be 0)
    aux_pre: torch.Tensor  # [S, B, k_aux]
    aux_valid: torch.Tensor  # [S, 1 or B, k_aux] bool: False where seed s chose fewer


def select(
    sae_in: torch.Tensor,
    w_s: torch.Tensor,
    b_s: torch.Tensor,
    norm: torch.Tensor,
    arch: str,
    k: int,
    dead: torch.Tensor,
    k_aux: list[int],
) -> Selection:
    """Rank scores = pre * |W_dec| (what sae-lens ranks; w_s, b_s are pre-scaled) and choose.

    TopK keeps each row's k best; BatchTopK keeps each row's m best relu'd scores as candidates
    for its batch-wide choice (`_batch_wide`); AuxK takes seed s's k_aux[s] best dead latents.
    Small problems go through one batched matmul; large ones seed by seed in cache-sized chunks.
    """
    n_seeds, bsz, _ = sae_in.shape
    d_sae = w_s.shape[2]
    m = k if arch == "topk" else min(d_sae, BATCHTOPK_CANDIDATES * k)
    ka = max(k_aux)
    valid = torch.arange(ka)[None, None, :] < torch.tensor(k_aux)[:, None, None]  # padding
    if n_seeds * bsz * d_sae <= WHOLE_MAX_ELEMENTS:
        sc = torch.baddbmm(b_s[:, None, :], sae_in, w_s)
        scores, ids = sc.topk(m, dim=-1, sorted=False)
        masked = torch.where(dead[:, None, :], sc, -torch.inf)
        aux_scores, aux_ids = masked.topk(ka, dim=-1, sorted=False)
        # A seed with fewer than ka dead latents got -inf fillers: exactly its k_aux[s] are finite.
        valid = torch.isfinite(aux_scores)
    else:
        parts = [
            _select_chunked(sae_in[s], w_s[s], b_s[s], m, dead[s], k_aux[s]) for s in range(n_seeds)
        ]
        ids = torch.stack([q[0] for q in parts])
        scores = torch.stack([q[1] for q in parts])
        aux_ids = torch.stack([F.pad(q[2], (0, ka - q[2].shape[1])) for q in parts])
        aux_scores = torch.stack([F.pad(q[3], (0, ka - q[3].shape[1])) for q in parts])
    aux_ids = torch.where(valid, aux_ids, 0)
    aux_scores = torch.where(valid, aux_scores, 0.0)
    if arch == "batchtopk":
        rows = [
            _batch_wide(sae_in[s], w_s[s], b_s[s], ids[s], scores[s].relu(), k)
            for s in range(n_seeds)
        ]
        width = max(r[0].shape[1] for r in rows)
        ids = torch.stack([F.pad(r[0], (0, width - r[0].shape[1])) for r in rows])
        scores = torch.stack([F.pad(r[1], (0, width - r[1].shape[1])) for r in rows])

    def unscale(i: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v / norm.gather(1, i.flatten(1)).view_as(i)

    return Selection(ids, unscale(ids, scores), aux_ids, unscale(aux_ids, aux_scores), valid)


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


def sparse_step(
    params: list[torch.Tensor],
    sae_in: torch.Tensor,
    y: torch.Tensor,
    dead: torch.Tensor,
    arch: str,
    k: int,
    aux_coeff: float,
    b_dec_in: bool,
) -> StepOut:
    """One step's losses and gradients for every seed, sparse after the encoder matmul."""
    w_enc, b_enc, w_dec, b_dec = params
    n_seeds, bsz, d_in = sae_in.shape
    d_sae = w_enc.shape[2]
    k_aux_full = y.shape[-1] // 2  # sae-lens: half the reconstructed width
    norm = w_dec.norm(dim=-1)  # [S, d_sae]
    n_dead = dead.sum(1).tolist()
    k_aux = [min(k_aux_full, n) for n in n_dead]
    sel = select(sae_in, w_enc * norm[:, None, :], b_enc * norm, norm, arch, k, dead, k_aux)
    act = sel.pre.relu()
    # One embedding_bag decodes every seed's rows (bags 0..SB-1) and, when some seed has dead
    # latents, their AuxK reconstructions (bags SB..2SB-1); its backward gives the gradients
    # w.r.t. the bag weights and W_dec, both sparse in what they touch.
    n_rows, m, ka = n_seeds * bsz, sel.ids.shape[2], sel.aux_ids.shape[2]
    offset = (torch.arange(n_seeds) * d_sae).view(n_seeds, 1, 1)
    bags = [(sel.ids + offset).flatten()]
    starts = [torch.arange(0, n_rows * m, m)]
    weights = [act.flatten()]
    if ka:
        bags.append((sel.aux_ids + offset).flatten())
        starts.append(n_rows * m + torch.arange(0, n_rows * ka, ka))
        weights.append(sel.aux_pre.flatten())
    with torch.enable_grad():
        wt = torch.cat(weights).requires_grad_(True)
        table = w_dec.detach().reshape(n_seeds * d_sae, d_in).requires_grad_(True)
        dec = F.embedding_bag(
            torch.cat(bags), table, torch.cat(starts), mode="sum", per_sample_weights=wt
        )
    resid = dec[:n_rows].detach().view(n_seeds, bsz, d_in) + b_dec[:, None, :] - y
    mse = resid.pow(2).sum(-1).mean(1)
    grad_dec = [2.0 * resid / bsz]
    aux_loss = torch.zeros(n_seeds)
    if ka:
        # AuxK (sae-lens calculate_topk_aux_loss): dead latents predict the residual.
        scale = torch.tensor([min(n / k_aux_full, 1.0) for n in n_dead]).view(n_seeds, 1, 1)
        diff = dec[n_rows:].detach().view(n_seeds, bsz, d_in) + resid  # recons - (y - out)
        aux_loss = aux_coeff * scale.flatten() * diff.pow(2).sum(-1).mean(1)
        grad_dec.append((2.0 * aux_coeff / bsz) * scale * diff)
    g_w, g_table = torch.autograd.grad(dec, (wt, table), torch.cat(grad_dec).view(-1, d_in))
    g_act = g_w[: n_rows * m].view_as(act) * (sel.pre > 0)
    entries = [_entries(sel.ids[s], g_act[s], s, d_sae) for s in range(n_seeds)]
    if ka:
        # Padding has weight 0 but a gradient (its row of W_dec . residual): drop it.
        g_aux = g_w[n_rows * m :].view_as(sel.aux_pre) * sel.aux_valid
        entries += [_entries(sel.aux_ids[s], g_aux[s], s, d_sae) for s in range(n_seeds)]
    g_wenc, g_benc = _encoder_grads(sae_in, entries, d_sae)
    g_bdec = grad_dec[0].sum(1)
    if b_dec_in:  # sae_in = x - b_dec feeds the encoder too
        g_bdec = g_bdec - torch.einsum("sdf,sf->sd", w_enc, g_benc)
    on = act > 0
    fired = torch.zeros(n_seeds, d_sae).scatter_add_(1, sel.ids.flatten(1), on.flatten(1).float())
    scaled = act * norm.gather(1, sel.ids.flatten(1)).view_as(act)
    low = torch.where(on, scaled, torch.inf).flatten(1).min(1).values
    return StepOut(
        mse=mse,
        aux=aux_loss,
        grads=[g_wenc, g_benc, g_table.view(n_seeds, d_sae, d_in), g_bdec],
        fired=fired > 0,
        l0=on.float().sum(-1).mean(1),
        min_active=torch.where(torch.isinf(low), torch.nan, low),
    )
