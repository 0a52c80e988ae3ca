"""Kernels of the seed-batched path (`husai.sae.batched.train`): one training step for all seeds.

`husai.sae.batched.select` chooses each row's latents as compact `Entries`; `sparse_step`
decodes them with one `embedding_bag` over the chosen rows of W_dec and writes
the gradients by hand: dL/dpre exists only at the chosen latents, so dW_enc is one sparse
matrix product and dW_dec comes from `embedding_bag`'s own backward. The math, term by term,
is sae-lens's TopK / BatchTopK training step; see `husai/sae/batched/train.py`.

Every tensor is made on the device of the step's inputs. On CUDA the encoder gradient is one
dense batched matmul instead of the sparse one (`dense_grads`): cuSPARSE's COO product is not
covered by torch's deterministic mode, and a dense [S, B, d_sae] gradient is cheap on a GPU.
`mm_dtype` bfloat16 runs the ranking and gradient matmuls in bfloat16 (`train.dtype`); the
rest stays float32. `static` (the driver sets it on CUDA) runs the step with fixed shapes and
no value read back to the host (`select_static`): the GPU's queue never drains mid-step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from husai.sae.batched.select import Entries, mm_as, select, select_static

# Dense decode from this share of latents decoded per row on: (k + AuxK's k_aux) / d_sae >=
# DENSE_DECODE_SHARE. Below it the sparse decode does less work; above it dense batched
# matmuls win. Measured on this project's 2-core CPU machine (benchmarks/decode_crossover.py).
DENSE_DECODE_SHARE = 1 / 8


@dataclass
class StepOut:
    """What one batched step tells the driver, every field per seed."""

    mse: torch.Tensor  # [S]
    aux: torch.Tensor  # [S] AuxK loss (0 without dead latents)
    grads: list[torch.Tensor]  # dL/d(W_enc, b_enc, W_dec, b_dec), stacked
    fired: torch.Tensor  # [S, d_sae] bool: latent active on some row
    l0: torch.Tensor  # [S] mean active latents per row
    min_active: torch.Tensor  # [S] smallest positive activation x |W_dec| (nan: none)


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
        return mm_as(dt, torch.bmm, sae_in.transpose(1, 2), g_pre), g_pre.sum(1)
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
    outs = [mm_as(dt, torch.bmm, z, w_dec) for z in zs]

    def backward(grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        g_w = torch.cat(
            [
                mm_as(dt, torch.bmm, g, w_dec.transpose(1, 2)).flatten()[i]
                for g, i in zip(grads, flat, strict=True)
            ]
        )
        g_table = sum(
            mm_as(dt, torch.bmm, z.transpose(1, 2), g) for z, g in zip(zs, grads, strict=True)
        )
        return g_w, g_table  # type: ignore[return-value]

    return outs, backward


def sparse_step(
    params: list[torch.Tensor],
    sae_in: torch.Tensor,
    y: torch.Tensor,
    dead: torch.Tensor,
    arch: str,
    k: int | Sequence[int],
    aux_coeff: float,
    b_dec_in: bool,
    dense_grads: bool = False,
    mm_dtype: torch.dtype = torch.float32,
    dense_decode: bool | None = False,
    static: bool = False,
    dead_possible: bool = True,
) -> StepOut:
    """One step's losses and gradients for every seed, sparse after the encoder matmul
    (`dense_decode`: the decode and its gradients as dense batched matmuls; None: decided for
    this step by `use_dense_decode`, from k and this step's AuxK width). `static`: fixed
    widths, no host reads; `dead_possible` False (the driver knows no latent can be dead yet)
    lets it skip AuxK's ranking. `k`: one for every member, or one per member (a bundle of
    grid points; `batched.select.select` chooses each run of members sharing k on its own)."""
    w_enc, b_enc, w_dec, b_dec = params
    n_seeds, bsz, d_in = sae_in.shape
    dev = sae_in.device
    d_sae = w_enc.shape[2]
    k_aux_full = y.shape[-1] // 2  # sae-lens: half the reconstructed width
    norm = w_dec.norm(dim=-1)  # [S, d_sae]
    w_s, b_s = w_enc * norm[:, None, :], b_enc * norm
    if static:
        aux_width = min(k_aux_full, d_sae) if dead_possible else 0
        main, aux = select_static(sae_in, w_s, b_s, norm, arch, k, dead, aux_width, mm_dtype)
        # min(n_dead / k_aux_full, 1) as the list below computes it: in double, then float32.
        scale = (dead.sum(1).double() / k_aux_full).clamp(max=1.0).float()
    else:
        n_dead = dead.sum(1).tolist()
        k_aux = [min(k_aux_full, n) for n in n_dead]
        aux_width = max(k_aux)
        main, aux = select(sae_in, w_s, b_s, norm, arch, k, dead, k_aux, mm_dtype)
        scale = torch.tensor([min(n / k_aux_full, 1.0) for n in n_dead], device=dev)
    act = main.pre.relu()
    # One embedding_bag decodes every seed's rows (bags 0..SB-1) and, when some seed has dead
    # latents, their AuxK reconstructions (bags SB..2SB-1); its backward gives the gradients
    # w.r.t. the bag weights and W_dec, both sparse in what they touch.
    n_rows, n_main, has_aux = n_seeds * bsz, len(main.lat), aux_width > 0
    if dense_decode is None:
        widest = k if isinstance(k, int) else max(k)
        dense_decode = use_dense_decode(widest + aux_width, d_sae)
    decode = _dense_decode if dense_decode else _sparse_decode
    parts = [(main, act), (aux, aux.pre)] if has_aux else [(main, act)]
    dec, backward = decode(parts, w_dec, n_rows, dt=mm_dtype)
    resid = dec[0] + b_dec[:, None, :] - y
    mse = resid.pow(2).sum(-1).mean(1)
    grad_dec = [2.0 * resid / bsz]
    aux_loss = torch.zeros(n_seeds, device=dev)
    if has_aux:
        # AuxK (sae-lens calculate_topk_aux_loss): dead latents predict the residual.
        scale = scale.view(n_seeds, 1, 1)
        diff = dec[1] + resid  # recons - (y - out)
        aux_loss = aux_coeff * scale.flatten() * diff.pow(2).sum(-1).mean(1)
        grad_dec.append((2.0 * aux_coeff / bsz) * scale * diff)
    g_w, g_table = backward(grad_dec)
    lat, row, g_pre = main.lat, main.row, g_w[:n_main] * (main.pre > 0)
    if has_aux:
        g_aux = g_w[n_main:] if aux.live is None else torch.where(aux.live, g_w[n_main:], 0.0)
        lat, row = torch.cat([lat, aux.lat]), torch.cat([row, aux.row])
        g_pre = torch.cat([g_pre, g_aux])
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
