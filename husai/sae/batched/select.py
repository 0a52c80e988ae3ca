"""How the seed-batched step chooses its latents (`husai.sae.batched.sparse` runs the step).

`select` ranks pre-activations in one batched matmul (small SAEs) or in row chunks that stay in
cache (large ones) and returns the chosen (row, latent) pairs as compact `Entries`: each row's k
best for TopK, the batch's k x batch best for BatchTopK, and AuxK's best dead latents. Widths
follow the data (how many latents are dead), which costs a few host reads a step; on the CPU
those are free.

`select_static` is its twin for CUDA, where every host read waits for the GPU to drain its
queue: every width is fixed by the config, nothing is read back, and AuxK's entries that a
seed does not use stay in place with weight zero (`Entries.live`). Both choose the same
latents; tests/sae/test_batched.py checks each against sae-lens's own step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Rows per pre-activation chunk: 128 x 4096 floats (2 MiB) stays in cache on this machine.
CHUNK_ELEMENTS = 1 << 19
# Up to this many S x batch x d_sae elements (16 MiB) all seeds are scored in one matmul.
WHOLE_MAX_ELEMENTS = 1 << 22
# On a GPU cache-sized chunks mean hundreds of tiny launches per step (measured on an H200:
# the seed-batched path at d_sae 16384 ran at 0.2x SAETrainer chunked); scores stay whole up to
# 2 GiB per [S, B, d_sae] tensor, and larger problems go in groups of seeds of that size.
GPU_WHOLE_MAX_ELEMENTS = 1 << 29
# BatchTopK keeps this many candidates per row (x k) before its batch-wide selection; a row
# that could hold more of the batch's top values is recomputed in full (exact either way).
BATCHTOPK_CANDIDATES = 4


def mm_as(dt: torch.dtype, fn: object, *args: torch.Tensor) -> torch.Tensor:
    """fn(*args) with its operands in `dt`, the result float32 (no copies at float32)."""
    out = fn(*(a.to(dt) for a in args))  # type: ignore[operator]
    return out.float()  # type: ignore[no-any-return]


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
        sc = mm_as(dt, torch.addmm, b, sae_in[i : i + chunk], w)
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
    # [E] bool, `select_static`'s AuxK only: entries in place to keep the width fixed, not
    # chosen (weight 0; their gradient is masked). None: every entry is chosen.
    live: torch.Tensor | None = None

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

    @classmethod
    def fixed(cls, ids: torch.Tensor, scores: torch.Tensor, d_sae: int) -> Entries:
        """Every candidate [S, B, m] in place, the finite scores live (no mask indexing, which
        reads a count back to the host)."""
        out = cls.of(ids, scores, None, d_sae)
        out.live = torch.isfinite(out.pre)
        return out

    @classmethod
    def none(cls, n_rows: int, device: torch.device) -> Entries:
        empty = torch.empty(0, dtype=torch.long, device=device)
        zeros = torch.zeros(n_rows, dtype=torch.long, device=device)
        return cls(empty, empty, torch.empty(0, device=device), zeros)

    def unscale(self, norm: torch.Tensor) -> Entries:
        """Scores were pre * |W_dec|; keep pre."""
        self.pre = self.pre / norm.flatten()[self.lat]
        if self.live is not None:
            self.pre = torch.where(self.live, self.pre, 0.0)
        return self


def select(
    sae_in: torch.Tensor,
    w_s: torch.Tensor,
    b_s: torch.Tensor,
    norm: torch.Tensor,
    arch: str,
    k: int | Sequence[int],
    dead: torch.Tensor,
    k_aux: list[int],
    dt: torch.dtype = torch.float32,
) -> tuple[Entries, Entries]:
    """Rank scores = pre * |W_dec| (what sae-lens ranks; w_s, b_s are pre-scaled) and choose:
    the main activation's entries and AuxK's (seed s: its k_aux[s] best dead latents per row).

    TopK keeps each row's k best; BatchTopK keeps each row's m best relu'd scores as candidates
    for its batch-wide choice (`_batch_wide`). Small problems go through one batched matmul;
    large ones seed by seed in cache-sized chunks. `k` per member (a bundle of grid points):
    each run of members sharing k is chosen on its own and the runs joined.
    """
    n_seeds, bsz, _ = sae_in.shape
    d_sae, dev = w_s.shape[2], sae_in.device
    groups = k_groups(k, n_seeds)
    if len(groups) > 1:
        return _joined_runs(
            [
                select(sae_in[g], w_s[g], b_s[g], norm[g], arch, kg, dead[g], k_aux[g], dt)
                for g, kg in groups
            ],
            bsz,
            d_sae,
        )
    k = groups[0][1]
    m = k if arch == "topk" else min(d_sae, BATCHTOPK_CANDIDATES * k)
    ka = max(k_aux)
    whole_max = GPU_WHOLE_MAX_ELEMENTS if dev.type == "cuda" else WHOLE_MAX_ELEMENTS
    if n_seeds * bsz * d_sae <= whole_max:
        sc = mm_as(dt, torch.baddbmm, b_s[:, None, :], sae_in, w_s)
        scores, ids = sc.topk(m, dim=-1, sorted=False)
        if ka:
            aux_scores, aux_ids = _dead_best(sc, dead, ka)
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
    main = _join(per_seed, bsz, d_sae)
    return main.unscale(norm), aux


def k_groups(k: int | Sequence[int], n_seeds: int) -> list[tuple[slice, int]]:
    """The members as runs sharing one k, (members, k) in order: one run for a plain stack."""
    ks = [k] * n_seeds if isinstance(k, int) else list(k)
    if len(ks) != n_seeds:
        raise ValueError(f"{len(ks)} values of k for {n_seeds} members")
    out, start = [], 0
    for i in range(1, n_seeds + 1):
        if i == n_seeds or ks[i] != ks[start]:
            out.append((slice(start, i), ks[start]))
            start = i
    return out


def _dead_best(sc: torch.Tensor, dead: torch.Tensor, ka: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's `ka` best scores [S, B, d_sae] among its seed's dead latents [S, d_sae] (scores,
    ids); a seed with fewer dead latents gets -inf fillers."""
    scores, ids = torch.where(dead[:, None, :], sc, -torch.inf).topk(ka, dim=-1, sorted=False)
    return scores, ids


def _joined_runs(
    runs: list[tuple[Entries, Entries]], bsz: int, d_sae: int
) -> tuple[Entries, Entries]:
    """The (main, AuxK) entries of consecutive runs of members (one per k) as one stack's."""
    return _join([r[0] for r in runs], bsz, d_sae), _join([r[1] for r in runs], bsz, d_sae)


def _join(parts: list[Entries], bsz: int, d_sae: int) -> Entries:
    """Entries of consecutive groups of seeds (each built as if its first seed were seed 0) as
    one set, rows and latents made global; the shifts are host integers (shapes), not reads."""
    if len(parts) == 1:
        return parts[0]
    lat, row, offsets = [], [], []
    seeds = entries = 0
    for p in parts:
        lat.append(p.lat + seeds * d_sae)
        row.append(p.row + seeds * bsz)
        offsets.append(p.offsets + entries)
        seeds += len(p.offsets) // bsz
        entries += len(p.lat)
    lives = [p.live for p in parts]
    return Entries(
        lat=torch.cat(lat),
        row=torch.cat(row),
        pre=torch.cat([p.pre for p in parts]),
        offsets=torch.cat(offsets),
        live=None if lives[0] is None else torch.cat(lives),  # type: ignore[arg-type]
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
        extra = mm_as(dt, torch.addmm, b, sae_in[rows], w).relu_()
        # The whole row replaces its candidates; other rows get zero-score fillers, never kept.
        ids = torch.cat([ids, torch.zeros(n, d_sae - m, dtype=torch.long, device=dev)], 1)
        scores = torch.cat([scores, torch.full((n, d_sae - m), -1.0, device=dev)], 1)
        ids[rows] = torch.arange(d_sae, device=dev).expand(len(rows), d_sae)
        scores[rows] = extra
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=dev)
    keep[scores.flatten().topk(total, sorted=False).indices] = True
    return ids, scores, keep.view_as(scores)


def select_static(
    sae_in: torch.Tensor,
    w_s: torch.Tensor,
    b_s: torch.Tensor,
    norm: torch.Tensor,
    arch: str,
    k: int | Sequence[int],
    dead: torch.Tensor,
    ka: int,
    dt: torch.dtype = torch.float32,
) -> tuple[Entries, Entries]:
    """`select` with fixed widths and nothing read back to the host (see the module's
    docstring). AuxK ranks `ka` (the widest k_aux, 0: no latent can be dead yet) masked scores
    in every seed; a seed with fewer dead latents gets -inf fillers, kept in place but not
    live, which is exactly `select`'s choice. Seeds are scored in groups of at most
    GPU_WHOLE_MAX_ELEMENTS score elements (one seed at least); `k` per member as in `select`."""
    n_seeds, bsz, _ = sae_in.shape
    d_sae = w_s.shape[2]
    groups = k_groups(k, n_seeds)
    if len(groups) > 1:
        return _joined_runs(
            [
                select_static(sae_in[g], w_s[g], b_s[g], norm[g], arch, kg, dead[g], ka, dt)
                for g, kg in groups
            ],
            bsz,
            d_sae,
        )
    k = groups[0][1]
    per = max(1, GPU_WHOLE_MAX_ELEMENTS // (bsz * d_sae))
    mains: list[Entries] = []
    auxes: list[Entries] = []
    for s0 in range(0, n_seeds, per):
        g = slice(s0, s0 + per)
        sc = mm_as(dt, torch.baddbmm, b_s[g, None, :], sae_in[g], w_s[g])
        if arch == "topk":
            scores, ids = sc.topk(k, dim=-1, sorted=False)
            mains.append(Entries.of(ids, scores, None, d_sae))
        else:
            mains.append(_batch_wide_static(sc, k))
        if ka:
            aux_scores, aux_ids = _dead_best(sc, dead[g], ka)
            auxes.append(Entries.fixed(aux_ids, aux_scores, d_sae))
    main = _join(mains, bsz, d_sae).unscale(norm)
    if not ka:
        return main, Entries.none(n_seeds * bsz, sae_in.device)
    return main, _join(auxes, bsz, d_sae).unscale(norm)


def _batch_wide_static(sc: torch.Tensor, k: int) -> Entries:
    """sae-lens BatchTopK for a group of seeds' scores [G, B, d_sae]: each seed's k x B largest
    relu'd scores over its whole batch at once, ordered by row (sorted flat positions), each
    row's start found by `searchsorted` rather than by counting on the host."""
    n_seeds, bsz, d_sae = sc.shape
    dev = sc.device
    flat = sc.relu().flatten(1)
    pos = flat.topk(k * bsz, dim=1, sorted=False).indices.sort(dim=1).values
    seed = torch.arange(n_seeds, device=dev)[:, None]
    row = (torch.div(pos, d_sae, rounding_mode="floor") + seed * bsz).flatten()
    lat = (pos % d_sae + seed * d_sae).flatten()
    offsets = torch.searchsorted(row, torch.arange(n_seeds * bsz, device=dev))
    return Entries(lat, row, flat.gather(1, pos).flatten(), offsets)
