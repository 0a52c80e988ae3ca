"""Kernels of the seed-batched path (`husai.sae.batched`): one training step for all seeds.

`select` ranks pre-activations in one batched matmul (small SAEs) or in row chunks that stay in
cache (large ones) and returns the chosen (row, latent) pairs as compact `Entries`;
`sparse_step` decodes them with one `embedding_bag` over the chosen rows of W_dec and writes
the gradients by hand: dL/dpre exists only at the chosen latents, so dW_enc is one sparse
matrix product and dW_dec comes from `embedding_bag`'s own backward. The math, term by term,
is sae-lens's TopK / BatchTopK training step; see `husai/sae/batched.py`.

Every tensor is made on the device of the step's inputs. On CUDA the encoder gradient is one
dense batched matmul instead of the sparse one (`dense_grads`): cuSPARSE's COO product is not
covered by torch's deterministic mode, and a dense [S, B, d_sae] gradient is cheap on a GPU.
`mm_dtype` bfloat16 runs the ranking and gradient matmuls in bfloat16 (`train.dtype`); the
rest stays float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Rows per pre-activation chunk: 128 x 4096 floats (2 MiB) stays in cache on this machine.
CHUNK_ELEMENTS = 1 << 19
# Up to this many S x batch x d_sae elements (16 MiB) all seeds are scored in one matmul.
WHOLE_MAX_ELEMENTS = 1 << 22
# On a GPU cache-sized chunks mean hundreds of tiny launches per step (measured on an H200:
# the seed-batched path at d_sae 16384 ran at 0.2x SAETrainer chunked); scores stay whole up to
# 2 GiB per [S, B, d_sae] tensor, and larger problems go in chunks of that size.
GPU_WHOLE_MAX_ELEMENTS = 1 << 29
# Dense decode from this share of latents decoded per row on: (k + AuxK's k_aux) / d_sae >=
# DENSE_DECODE_SHARE. Below it the sparse decode does less work; above it dense batched
# matmuls win. Measured on this project's 2-core CPU machine (benchmarks/decode_crossover.py).
DENSE_DECODE_SHARE = 1 / 8
# BatchTopK keeps this many candidates per row (x k) before its batch-wide selection; a row
# that could hold more of the batch's top values is recomputed in full (exact either way).
BATCHTOPK_CANDIDATES = 4


def _mm(dt: torch.dtype, fn: object, *args: torch.Tensor) -> torch.Tensor:
    """fn(*args) with its operands in `dt`, the result float32 (no copies at float32)."""
    out = fn(*(a.to(dt) for a in args))  # type: ignore[operator]
    return out.float()  # type: ignore[no-any-return]


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
    dt: torch.dtype,
) -> tuple[torch.Tensor, ...]:
    """One seed, in row chunks that stay in cache: each row's m best scores (ids, scores) and
    its k_aux best among `dead` latents (ids, scores; empty when k_aux is 0)."""
    n, d_sae, dev = sae_in.shape[0], w.shape[1], sae_in.device
    budget = GPU_WHOLE_MAX_ELEMENTS if dev.type == "cuda" else CHUNK_ELEMENTS
    chunk = max(1, budget // d_sae)
    ids = torch.empty(n, m, dtype=torch.long, device=dev)
    scores = torch.empty(n, m, device=dev)
    aux_ids = torch.empty(n, k_aux, dtype=torch.long, device=dev)
    aux_scores = torch.empty(n, k_aux, device=dev)
    dead_idx = dead.nonzero().squeeze(1)
    for i in range(0, n, chunk):
        sc = _mm(dt, torch.addmm, b, sae_in[i : i + chunk], w)
        torch.topk(sc, m, dim=-1, sorted=False, out=(scores[i : i + chunk], ids[i : i + chunk]))
        if k_aux:
            v, j = sc.index_select(1, dead_idx).topk(k_aux, dim=-1, sorted=False)
            aux_scores[i : i + chunk], aux_ids[i : i + chunk] = v, dead_idx[j]
    return ids, scores, aux_ids, aux_scores


@dataclass
class Entries:
    """Chosen (row, latent) pairs of every seed, flat and ordered by row: row r's entries are
    lat[offsets[r]:offsets[r + 1]]. Rows and latents are global: s * B + b and s * d_sae + j."""

    lat: torch.Tensor  # [E] latent (row of the stacked W_dec table)
    row: torch.Tensor  # [E] batch row
    pre: torch.Tensor  # [E] unscaled pre-activation (sae_in @ W_enc + b_enc)
    offsets: torch.Tensor  # [S * B] start of each row's entries

    @classmethod
    def of(
        cls, ids: torch.Tensor, scores: torch.Tensor, keep: torch.Tensor | None, d_sae: int
    ) -> Entries:
        """From per-row candidates ids/scores [S, B, m] and which of them are kept (None: all)."""
        n_seeds, bsz, m = ids.shape
        dev = ids.device
        lat = ids + (torch.arange(n_seeds, device=dev) * d_sae).view(n_seeds, 1, 1)
        row = torch.arange(n_seeds * bsz, device=dev).view(n_seeds, bsz, 1).expand_as(ids)
        if keep is None:  # TopK: every candidate, without the copy a mask would cost
            offsets = torch.arange(0, n_seeds * bsz * m, m, device=dev)
            return cls(lat.flatten(), row.flatten(), scores.flatten(), offsets)
        counts = keep.sum(-1).flatten()
        offsets = torch.cumsum(counts, 0) - counts
        return cls(lat[keep], row[keep], scores[keep], offsets)

    def unscale(self, norm: torch.Tensor) -> Entries:
        """Scores were pre * |W_dec|; keep pre."""
        self.pre = self.pre / norm.flatten()[self.lat]
        return self


def select(
    sae_in: torch.Tensor,
    w_s: torch.Tensor,
    b_s: torch.Tensor,
    norm: torch.Tensor,
    arch: str,
    k: int,
    dead: torch.Tensor,
    k_aux: list[int],
    dt: torch.dtype = torch.float32,
) -> tuple[Entries, Entries]:
    """Rank scores = pre * |W_dec| (what sae-lens ranks; w_s, b_s are pre-scaled) and choose:
    the main activation's entries and AuxK's (seed s: its k_aux[s] best dead latents per row).

    TopK keeps each row's k best; BatchTopK keeps each row's m best relu'd scores as candidates
    for its batch-wide choice (`_batch_wide`). Small problems go through one batched matmul;
    large ones seed by seed in cache-sized chunks.
    """
    n_seeds, bsz, _ = sae_in.shape
    d_sae, dev = w_s.shape[2], sae_in.device
    m = k if arch == "topk" else min(d_sae, BATCHTOPK_CANDIDATES * k)
    ka = max(k_aux)
    whole_max = GPU_WHOLE_MAX_ELEMENTS if dev.type == "cuda" else WHOLE_MAX_ELEMENTS
    if n_seeds * bsz * d_sae <= whole_max:
        sc = _mm(dt, torch.baddbmm, b_s[:, None, :], sae_in, w_s)
        scores, ids = sc.topk(m, dim=-1, sorted=False)
        if ka:
            masked = torch.where(dead[:, None, :], sc, -torch.inf)
            aux_scores, aux_ids = masked.topk(ka, dim=-1, sorted=False)
        else:  # no dead latent in any seed: no copy of the scores to rank nothing
            aux_scores = sc.new_empty(n_seeds, bsz, 0)
            aux_ids = ids.new_empty(n_seeds, bsz, 0)
        # A seed with fewer than ka dead latents got -inf fillers: exactly its k_aux[s] are finite.
        aux_keep = torch.isfinite(aux_scores)
    else:
        parts = [
            _select_chunked(sae_in[s], w_s[s], b_s[s], m, dead[s], k_aux[s], dt)
            for s in range(n_seeds)
        ]
        ids = torch.stack([q[0] for q in parts])
        scores = torch.stack([q[1] for q in parts])
        aux_ids = torch.stack([F.pad(q[2], (0, ka - q[2].shape[1])) for q in parts])
        aux_scores = torch.stack([F.pad(q[3], (0, ka - q[3].shape[1])) for q in parts])
        aux_keep = (
            torch.arange(ka, device=dev)[None, None, :]
            < torch.tensor(k_aux, device=dev)[:, None, None]
        )
        aux_keep = aux_keep.expand_as(aux_ids)
    aux = Entries.of(aux_ids, aux_scores, aux_keep, d_sae).unscale(norm)
    if arch == "topk":
        return Entries.of(ids, scores, None, d_sae).unscale(norm), aux
    rows = [
        _batch_wide(sae_in[s], w_s[s], b_s[s], ids[s], scores[s].relu(), k, dt)
        for s in range(n_seeds)
    ]
    per_seed = [Entries.of(i[None], v[None], kp[None], d_sae) for i, v, kp in rows]
    main = _concat(per_seed, bsz, d_sae)
    return main.unscale(norm), aux


def _concat(parts: list[Entries], bsz: int, d_sae: int) -> Entries:
    """Seed-by-seed entries (each built as seed 0) as one set, rows and latents made global."""
    sizes = torch.tensor([len(p.lat) for p in parts], device=parts[0].lat.device)
    start = torch.cumsum(sizes, 0) - sizes
    return Entries(
        lat=torch.cat([p.lat + s * d_sae for s, p in enumerate(parts)]),
        row=torch.cat([p.row + s * bsz for s, p in enumerate(parts)]),
        pre=torch.cat([p.pre for p in parts]),
        offsets=torch.cat([p.offsets + start[s] for s, p in enumerate(parts)]),
    )


def _batch_wide(
    sae_in: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    ids: torch.Tensor,
    scores: torch.Tensor,
    k: int,
    dt: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sae-lens BatchTopK for one seed: the batch's k x n largest relu'd scores, as candidates
    (ids, scores) [n, width] and which of them are kept (exactly k x n)."""
    n, m = scores.shape
    d_sae, dev = w.shape[1], scores.device
    total = k * n
    threshold = scores.flatten().topk(total, sorted=True).values[-1]
    low = scores.min(dim=1).values
    # A row whose smallest candidate is positive and reaches the threshold may hold more of the
    # batch's top values than it kept: its whole row joins the candidates (exact either way).
    if m < d_sae:
        full = (low >= threshold) & (low > 0)
    else:
        full = torch.zeros(n, dtype=torch.bool, device=dev)
    if bool(full.any()):
        rows = full.nonzero().squeeze(1)
        extra = _mm(dt, torch.addmm, b, sae_in[rows], w).relu_()
        # The whole row replaces its candidates; other rows get zero-score fillers, never kept.
        ids = torch.cat([ids, torch.zeros(n, d_sae - m, dtype=torch.long, device=dev)], 1)
        scores = torch.cat([scores, torch.full((n, d_sae - m), -1.0, device=dev)], 1)
        ids[rows] = torch.arange(d_sae, device=dev).expand(len(rows), d_sae)
        scores[rows] = extra
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=dev)
    keep[scores.flatten().topk(total, sorted=False).indices] = True
    return ids, scores, keep.view_as(scores)


def _encoder_grads(
    sae_in: torch.Tensor,
    lat: torch.Tensor,
    row: torch.Tensor,
    g: torch.Tensor,
    d_sae: int,
    dense: bool = False,
    dt: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dW_enc [S, d_in, d_sae] and dL/db_enc [S, d_sae] from sparse dL/dpre at (lat, row)."""
    s, bsz, d_in = sae_in.shape
    if dense:
        # Row s*B + b, latent s*d_sae + j sit at (s, b, j) of a dense [S, B, d_sae] gradient.
        flat = torch.zeros(s * bsz * d_sae, device=g.device)
        g_pre = flat.index_add_(0, row * d_sae + lat % d_sae, g).view(s, bsz, d_sae)
        return _mm(dt, torch.bmm, sae_in.transpose(1, 2), g_pre), g_pre.sum(1)
    # Indices are built here, in range by construction: skip the invariant check.
    g_mat = torch.sparse_coo_tensor(
        torch.stack([lat, row]), g, (s * d_sae, s * bsz), check_invariants=False
    )
    g_w = torch.sparse.mm(g_mat, sae_in.reshape(s * bsz, d_in)).view(s, d_sae, d_in)
    g_b = torch.zeros(s * d_sae, device=g.device).index_add_(0, lat, g).view(s, d_sae)
    return g_w.transpose(1, 2).contiguous(), g_b


def use_dense_decode(per_row: int, d_sae: int) -> bool:
    """Whether a step that decodes `per_row` latents of `d_sae` per row does so densely."""
    return per_row >= DENSE_DECODE_SHARE * d_sae


Backward = Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def _sparse_decode(
    parts: list[tuple[Entries, torch.Tensor]],
    w_dec: torch.Tensor,
    n_rows: int,
    dt: torch.dtype = torch.float32,
) -> tuple[list[torch.Tensor], Backward]:
    """Each part's reconstruction [S, B, d_in] from its entries and weights, by one
    embedding_bag (bags of part i at rows i*SB..); its backward: dL/d(entry weights), dL/dW_dec."""
    n_seeds, d_sae, d_in = w_dec.shape
    starts = [0]
    for e, _ in parts[:-1]:
        starts.append(starts[-1] + len(e.lat))
    with torch.enable_grad():
        wt = torch.cat([w for _, w in parts]).requires_grad_(True)
        table = w_dec.detach().reshape(n_seeds * d_sae, d_in).requires_grad_(True)
        dec = F.embedding_bag(
            torch.cat([e.lat for e, _ in parts]),
            table,
            torch.cat([e.offsets + s for (e, _), s in zip(parts, starts, strict=True)]),
            mode="sum",
            per_sample_weights=wt,
        )
    outs = [
        dec[i * n_rows : (i + 1) * n_rows].detach().view(n_seeds, -1, d_in)
        for i in range(len(parts))
    ]

    def backward(grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        g_w, g_table = torch.autograd.grad(dec, (wt, table), torch.cat(grads).view(-1, d_in))
        return g_w, g_table.view(n_seeds, d_sae, d_in)

    return outs, backward


def _dense_decode(
    parts: list[tuple[Entries, torch.Tensor]],
    w_dec: torch.Tensor,
    n_rows: int,
    dt: torch.dtype = torch.float32,
) -> tuple[list[torch.Tensor], Backward]:
    """`_sparse_decode` as dense batched matmuls: each part's activations scattered into a
    [S, B, d_sae] matrix, decoded by bmm; the backward is two more bmm per part."""
    n_seeds, d_sae, d_in = w_dec.shape
    flat = [e.row * d_sae + e.lat % d_sae for e, _ in parts]
    zs = [
        torch.zeros(n_rows * d_sae, device=w_dec.device)
        .index_put_((i,), w)
        .view(n_seeds, -1, d_sae)
        for i, (_, w) in zip(flat, parts, strict=True)
    ]
    outs = [_mm(dt, torch.bmm, z, w_dec) for z in zs]

    def backward(grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        g_w = torch.cat(
            [
                _mm(dt, torch.bmm, g, w_dec.transpose(1, 2)).flatten()[i]
                for g, i in zip(grads, flat, strict=True)
            ]
        )
        g_table = sum(
            _mm(dt, torch.bmm, z.transpose(1, 2), g) for z, g in zip(zs, grads, strict=True)
        )
        return g_w, g_table  # type: ignore[return-value]

    return outs, backward


def sparse_step(
    params: list[torch.Tensor],
    sae_in: torch.Tensor,
    y: torch.Tensor,
    dead: torch.Tensor,
    arch: str,
    k: int,
    aux_coeff: float,
    b_dec_in: bool,
    dense_grads: bool = False,
    mm_dtype: torch.dtype = torch.float32,
    dense_decode: bool | None = False,
) -> StepOut:
    """One step's losses and gradients for every seed, sparse after the encoder matmul
    (`dense_decode`: the decode and its gradients as dense batched matmuls; None: decided for
    this step by `use_dense_decode`, from k and this step's AuxK width)."""
    w_enc, b_enc, w_dec, b_dec = params
    n_seeds, bsz, d_in = sae_in.shape
    dev = sae_in.device
    d_sae = w_enc.shape[2]
    k_aux_full = y.shape[-1] // 2  # sae-lens: half the reconstructed width
    norm = w_dec.norm(dim=-1)  # [S, d_sae]
    n_dead = dead.sum(1).tolist()
    k_aux = [min(k_aux_full, n) for n in n_dead]
    main, aux = select(
        sae_in, w_enc * norm[:, None, :], b_enc * norm, norm, arch, k, dead, k_aux, mm_dtype
    )
    act = main.pre.relu()
    # One embedding_bag decodes every seed's rows (bags 0..SB-1) and, when some seed has dead
    # latents, their AuxK reconstructions (bags SB..2SB-1); its backward gives the gradients
    # w.r.t. the bag weights and W_dec, both sparse in what they touch.
    n_rows, n_main, has_aux = n_seeds * bsz, len(main.lat), max(k_aux) > 0
    if dense_decode is None:
        dense_decode = use_dense_decode(k + max(k_aux), d_sae)
    decode = _dense_decode if dense_decode else _sparse_decode
    parts = [(main, act), (aux, aux.pre)] if has_aux else [(main, act)]
    dec, backward = decode(parts, w_dec, n_rows, dt=mm_dtype)
    resid = dec[0] + b_dec[:, None, :] - y
    mse = resid.pow(2).sum(-1).mean(1)
    grad_dec = [2.0 * resid / bsz]
    aux_loss = torch.zeros(n_seeds, device=dev)
    if has_aux:
        # AuxK (sae-lens calculate_topk_aux_loss): dead latents predict the residual.
        scale = torch.tensor([min(n / k_aux_full, 1.0) for n in n_dead], device=dev)
        scale = scale.view(n_seeds, 1, 1)
        diff = dec[1] + resid  # recons - (y - out)
        aux_loss = aux_coeff * scale.flatten() * diff.pow(2).sum(-1).mean(1)
        grad_dec.append((2.0 * aux_coeff / bsz) * scale * diff)
    g_w, g_table = backward(grad_dec)
    lat, row, g_pre = main.lat, main.row, g_w[:n_main] * (main.pre > 0)
    if has_aux:
        lat, row = torch.cat([lat, aux.lat]), torch.cat([row, aux.row])
        g_pre = torch.cat([g_pre, g_w[n_main:]])
    dense = dense_grads or dense_decode
    g_wenc, g_benc = _encoder_grads(sae_in, lat, row, g_pre, d_sae, dense, mm_dtype)
    g_bdec = grad_dec[0].sum(1)
    if b_dec_in:  # sae_in = x - b_dec feeds the encoder too
        g_bdec = g_bdec - torch.einsum("sdf,sf->sd", w_enc, g_benc)
    on = act > 0
    fired = torch.zeros(n_seeds * d_sae, device=dev).index_add_(0, main.lat, on.float())
    l0 = torch.zeros(n_rows, device=dev).index_add_(0, main.row, on.float())
    l0 = l0.view(n_seeds, bsz).mean(1)
    scaled = torch.where(on, act * norm.flatten()[main.lat], torch.inf)
    seed_of = torch.div(main.row, bsz, rounding_mode="floor")
    low = torch.full((n_seeds,), torch.inf, device=dev)
    low = low.scatter_reduce_(0, seed_of, scaled, "amin")
    return StepOut(
        mse=mse,
        aux=aux_loss,
        grads=[g_wenc, g_benc, g_table, g_bdec],
        fired=fired.view(n_seeds, d_sae) > 0,
        l0=l0,
        min_active=torch.where(torch.isinf(low), torch.nan, low),
    )
