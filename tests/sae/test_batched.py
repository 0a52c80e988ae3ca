"""The seed-batched path against sae-lens's own training step (the reference), on the same
initial weights and the same batches (both draw them from the seed's streams)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sae_lens.saes.batchtopk_sae import BatchTopK

import husai.sae.batched.select
import husai.sae.batched.sparse
import husai.sae.batched.train
from husai import names
from husai.config.experiment import SAEConfig, SAETrainConfig
from husai.measure.metrics import recon_metrics
from husai.measure.stability import stability_report
from husai.sae.batched.select import BATCHTOPK_CANDIDATES, select, select_static
from husai.sae.batched.sparse import sparse_step
from husai.sae.batched.train import train_seeds_batched
from husai.sae.build import TranscoderStepInput, build_sae, decoder, load_sae, save_sae
from husai.sae.consistency import ConsistencyPenalty
from husai.sae.train import train_members, train_sae, train_seeds
from husai.sae.types import TrainedSAE
from tests.helpers import sparse_data

SEEDS = (0, 1, 2)
TRAIN = SAETrainConfig(
    steps=300,
    batch_size=256,
    lr=3e-3,
    lr_warmup_steps=10,
    lr_decay_steps=50,
    dead_window=20,  # short, so that AuxK on dead latents is part of what is compared
    log_every=5,
)


def _use(kind: str, monkeypatch: pytest.MonkeyPatch) -> str:
    if kind == "static":  # the CUDA step (fixed widths, no host reads), here on the CPU
        monkeypatch.setattr(husai.sae.batched.train, "static_step", lambda device: True)
    dense = kind == "dense"
    share = 0.0 if dense else float("inf")  # every step dense, or every step sparse
    monkeypatch.setattr(husai.sae.batched.sparse, "DENSE_DECODE_SHARE", share)
    if kind == "chunked":
        monkeypatch.setattr(husai.sae.batched.select, "WHOLE_MAX_ELEMENTS", 0)
        monkeypatch.setattr(husai.sae.batched.select, "CHUNK_ELEMENTS", 64 * 128)
    return kind


@pytest.fixture(params=["whole", "chunked", "dense", "static"])
def step_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of scoring: one batched matmul (small SAEs) and cache-sized chunks seed by
    seed (large SAEs; forced here with chunks of 64 rows); each with the sparse decode, and
    the dense decode (many latents per row: forced here for k 4 of 128); and the step CUDA
    runs (`static`: fixed widths, nothing read back to the host)."""
    return _use(str(request.param), monkeypatch)


@pytest.fixture(params=["whole", "chunked", "static"])
def scoring(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The three ways of scoring with the sparse decode (BatchTopK's 300-step run; its dense
    decode is checked step by step in the gradient test)."""
    return _use(str(request.param), monkeypatch)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    x = sparse_data(4000)
    return x[:3200], x[3200:]


def curves(t: TrainedSAE, key: str) -> np.ndarray:
    return np.asarray(t.curves.values[key])


def compare(
    ref: list[TrainedSAE], bat: list[TrainedSAE], held_out: torch.Tensor, rtol_steps: int
) -> dict[str, float]:
    """Asserts the issue's equivalence and returns the numbers (printed with -s)."""
    worst = 0.0
    for r, b in zip(ref, bat, strict=True):
        assert r.seed == b.seed and r.curves.steps == b.curves.steps
        assert torch.equal(r.decoder_step0, b.decoder_step0)  # the same initial weights
        n = sum(1 for s in r.curves.steps if s < rtol_steps)
        for key in ("loss", "mse", "auxiliary_reconstruction_loss"):
            rv, bv = curves(r, key)[:n], curves(b, key)[:n]
            rel = np.abs(rv - bv) / np.maximum(np.abs(rv), 1e-6)
            worst = max(worst, float(rel.max()))
            assert rel.max() < 1e-4, (key, r.seed, float(rel.max()))
        assert curves(r, "auxiliary_reconstruction_loss").max() > 0  # AuxK was exercised
        assert curves(r, "l0")[-1] == pytest.approx(curves(b, "l0")[-1], abs=0.5)
    ev_r = [recon_metrics(t.sae, held_out).ev for t in ref]
    ev_b = [recon_metrics(t.sae, held_out).ev for t in bat]
    assert abs(np.mean(ev_r) - np.mean(ev_b)) < 0.005
    d_in = held_out.shape[1]
    random = [
        decoder(build_sae(SAEConfig(architecture="topk", d_sae=128, k=4), d_in, 10**6 + s))
        for s in SEEDS
    ]
    rep = stability_report(
        [t.decoder for t in ref], random, [t.decoder_step0 for t in ref], {}, d_in
    )
    rep_b = stability_report(
        [t.decoder for t in bat], random, [t.decoder_step0 for t in bat], {}, d_in
    )
    for m, st in rep.metrics.items():
        assert st.delta.lcb is not None and st.delta.ucb is not None
        assert st.delta.lcb <= rep_b.metrics[m].delta.value <= st.delta.ucb, m
    return {
        "curve_max_rel": worst,
        "ev_ref": float(np.mean(ev_r)),
        "ev_batched": float(np.mean(ev_b)),
        "pw_mcc_ref": rep.metrics["pw_mcc"].value,
        "pw_mcc_batched": rep_b.metrics["pw_mcc"].value,
    }


def test_topk_matches_sae_lens_step_by_step(
    data: tuple[torch.Tensor, torch.Tensor], step_kind: str
) -> None:
    train, held_out = data
    sae = SAEConfig(architecture="topk", d_sae=128, k=4)
    ref = [train_sae(sae, TRAIN, train, s) for s in SEEDS]
    bat = train_seeds_batched(sae, TRAIN, train, SEEDS)
    got = compare(ref, bat, held_out, rtol_steps=TRAIN.steps)
    print("topk", step_kind, got)
    for r, b in zip(ref, bat, strict=True):
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            assert torch.allclose(getattr(r.sae, name), getattr(b.sae, name), atol=1e-5), name


def test_batchtopk_matches_sae_lens(data: tuple[torch.Tensor, torch.Tensor], scoring: str) -> None:
    """BatchTopK's batch-wide threshold turns float-level differences into an occasional other
    choice at the margin, after which the runs drift apart: the curve is compared tightly
    for the first 100 steps, the end by the issue's metric tolerances."""
    train, held_out = data
    sae = SAEConfig(architecture="batchtopk", d_sae=128, k=4)
    ref = [train_sae(sae, TRAIN, train, s) for s in SEEDS]
    bat = train_seeds_batched(sae, TRAIN, train, SEEDS)
    got = compare(ref, bat, held_out, rtol_steps=100)
    print("batchtopk", scoring, got)
    for r, b in zip(ref, bat, strict=True):
        assert float(b.sae.topk_threshold) == pytest.approx(float(r.sae.topk_threshold), rel=0.05)


def test_transcoder_matches_sae_lens_step_by_step(step_kind: str) -> None:
    x = sparse_data(2000, seed=1)
    y = torch.tanh(x @ torch.randn(32, 32, generator=torch.Generator().manual_seed(2)))
    sae = SAEConfig(architecture="topk", d_sae=128, k=4)
    cfg = TRAIN.model_copy(update={"steps": 150})
    ref = [train_sae(sae, cfg, x, s, target=y) for s in SEEDS[:2]]
    bat = train_seeds_batched(sae, cfg, x, SEEDS[:2], target=y)
    for r, b in zip(ref, bat, strict=True):
        rel = np.abs(curves(r, "loss") - curves(b, "loss")) / curves(r, "loss")
        assert rel.max() < 1e-4
        assert not b.sae.cfg.apply_b_dec_to_input


def test_batched_is_deterministic_and_saves_as_sae_lens(
    data: tuple[torch.Tensor, torch.Tensor], tmp_path: object, step_kind: str
) -> None:
    train, held_out = data
    sae = SAEConfig(architecture="batchtopk", d_sae=128, k=4)
    cfg = TRAIN.model_copy(update={"steps": 60})
    a = train_seeds_batched(sae, cfg, train, SEEDS[:2])
    b = train_seeds_batched(sae, cfg, train, SEEDS[:2])
    for x, y in zip(a, b, strict=True):
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            assert torch.equal(getattr(x.sae, name), getattr(y.sae, name))
        assert x.curves.values == y.curves.values
    # Saved and loaded by sae-lens, it is the SAE the reference loop would have saved.
    ref = train_sae(sae, cfg, train, SEEDS[0])
    root = Path(str(tmp_path))
    ours, theirs = load_sae(save_sae(a[0].sae, root / "b")), load_sae(save_sae(ref.sae, root / "r"))
    assert type(ours) is type(theirs)
    for name, p in theirs.state_dict().items():
        assert torch.allclose(ours.state_dict()[name], p, atol=1e-4, rtol=1e-4), name
    ev = recon_metrics(ours, held_out).ev
    assert ev == pytest.approx(recon_metrics(theirs, held_out).ev, abs=1e-3)


def test_train_seeds_falls_back_where_there_is_no_batched_path(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    train, _ = data
    cfg = TRAIN.model_copy(update={"steps": 20})
    for arch, batched_cfg in (
        ("jumprelu", cfg),
        ("topk", cfg.model_copy(update={"seed_batched": False})),
    ):
        sae = SAEConfig(architecture=arch, d_sae=128, k=4)
        got = list(train_seeds(sae, batched_cfg, train, SEEDS[:2]))
        ref = [train_sae(sae, cfg, train, s) for s in SEEDS[:2]]
        for g, r in zip(got, ref, strict=True):
            assert torch.equal(g.decoder, r.decoder)  # the reference loop itself, bit for bit
    with pytest.raises(ValueError, match="jumprelu"):
        train_seeds_batched(SAEConfig(architecture="jumprelu", d_sae=128), cfg, train, SEEDS)


def test_batchtopk_selection_equals_sae_lens_even_when_a_row_holds_many(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """A row with far more than its candidate share of the batch's top values is recomputed
    whole; the chosen set equals sae-lens's BatchTopK on the same pre-activations."""
    train, _ = data
    k, d_sae = 4, 128
    sae = build_sae(SAEConfig(architecture="batchtopk", d_sae=d_sae, k=k), 32, 0)
    x = train[:64].clone()
    x[5] *= 40.0  # one row dominates the batch
    x[9] *= 25.0
    w, b, n = sae.W_enc.detach(), sae.b_enc.detach(), sae.W_dec.detach().norm(dim=-1)
    dead = torch.zeros(1, d_sae, dtype=torch.bool)
    main, _ = select(x[None], (w * n)[None], (b * n)[None], n[None], "batchtopk", k, dead, [0])
    counts = torch.bincount(main.row, minlength=64)
    assert counts.max() > BATCHTOPK_CANDIDATES * k  # the dominant rows kept more than m
    assert len(main.lat) == k * 64  # exactly k x batch entries, no padding
    ours = torch.zeros(64, d_sae)
    ours[main.row, main.lat] = (main.pre * n[main.lat]).relu()
    theirs = BatchTopK(k)((x @ w + b) * n)
    assert torch.equal(ours != 0, theirs != 0)
    assert torch.allclose(ours, theirs, atol=1e-4)
    # The CUDA step's selection (the whole batch ranked at once) is the same set.
    st, _ = select_static(x[None], (w * n)[None], (b * n)[None], n[None], "batchtopk", k, dead, 0)
    assert torch.equal(torch.bincount(st.row, minlength=64), counts)
    static = torch.zeros(64, d_sae)
    static[st.row, st.lat] = (st.pre * n[st.lat]).relu()
    assert torch.equal(static != 0, theirs != 0)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("transcoder", [False, True])
def test_one_step_gradients_equal_sae_lens_autograd(
    arch: str, transcoder: bool, step_kind: str
) -> None:
    """Every parameter's gradient of one batched step against autograd through sae-lens's own
    training_forward_pass, seed by seed, with seeds of 0, fewer than k_aux, and more than
    k_aux dead latents (k_aux = 16 here)."""
    d_in, d_sae, k, bsz = 32, 128, 4, 64
    cfg = SAEConfig(architecture=arch, d_sae=d_sae, k=k)
    g = torch.Generator().manual_seed(5)
    saes = [build_sae(cfg, d_in, s, transcoder=transcoder) for s in range(3)]
    for sae in saes:  # move off the initialisation so that every term is non-trivial
        with torch.no_grad():
            for prm in sae.parameters():
                prm.add_(0.05 * torch.randn(prm.shape, generator=g))
    x = sparse_data(3 * bsz, seed=6).view(3, bsz, d_in)
    y = torch.tanh(x) if transcoder else x
    dead = torch.zeros(3, d_sae, dtype=torch.bool)
    dead[1, :10] = True
    dead[2, 30:80] = True
    params = [torch.stack([getattr(s, n).detach() for s in saes]) for n in ("W_enc", "b_enc")]
    params += [torch.stack([getattr(s, n).detach() for s in saes]) for n in ("W_dec", "b_dec")]
    sae_in = x if transcoder else x - params[3][:, None, :]
    dense, static = step_kind == "dense", step_kind == "static"
    out = sparse_step(
        params, sae_in, y, dead, arch, k, 1.0, not transcoder, dense_decode=dense, static=static
    )
    for s, sae in enumerate(saes):
        step = TranscoderStepInput(
            sae_in=x[s], coefficients={}, dead_neuron_mask=dead[s], n_training_steps=0,
            is_logging_step=False, target=y[s] if transcoder else None,
        )  # fmt: skip
        ref = sae.training_forward_pass(step)
        ref.loss.backward()
        assert float(out.mse[s]) == pytest.approx(ref.losses["mse_loss"].item(), rel=1e-5)
        aux = ref.losses["auxiliary_reconstruction_loss"].item()
        assert float(out.aux[s]) == pytest.approx(aux, rel=1e-5, abs=1e-7)
        assert (aux > 0) == bool(dead[s].any())
        for i, name in enumerate(("W_enc", "b_enc", "W_dec", "b_dec")):
            want = getattr(sae, name).grad
            assert torch.allclose(out.grads[i][s], want, rtol=1e-4, atol=1e-5), (s, name)


def test_consistency_term_matches_the_sae_lens_extension(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """lambda > 0: the penalty toward a reference joins each seed's step as in the sae-lens
    extension's mixin (husai/sae/build.py)."""
    train, _ = data
    sae = SAEConfig(architecture="topk", d_sae=128, k=4)
    cfg = TRAIN.model_copy(update={"steps": 120})
    ref_dec = decoder(build_sae(sae, 32, 99))
    lam = 5.0

    def pulls() -> list[tuple[ConsistencyPenalty, float]]:
        return [(ConsistencyPenalty(ref_dec, 25), lam) for _ in SEEDS[:2]]

    ref = [train_sae(sae, cfg, train, s, pulls()[0]) for s in SEEDS[:2]]
    bat = train_seeds_batched(sae, cfg, train, SEEDS[:2], consistency=pulls())
    for r, b in zip(ref, bat, strict=True):
        for key in ("loss", "consistency_loss", "auxiliary_reconstruction_loss"):
            rv, bv = curves(r, key), curves(b, key)
            assert np.abs(rv - bv).max() / np.abs(rv).max() < 1e-4, key
        assert curves(r, "consistency_loss").max() > 0
        assert torch.allclose(r.decoder, b.decoder, atol=1e-5)


def test_the_decode_is_dense_from_the_measured_share_of_latents_per_row() -> None:
    """k plus AuxK's width against d_sae (benchmarks/decode_crossover.py measured where dense
    wins on this machine)."""
    from husai.sae.batched.sparse import use_dense_decode

    assert use_dense_decode(16, 128) and not use_dense_decode(8, 128)
    assert use_dense_decode(8 + 16, 128)  # dead latents decode too
    assert not use_dense_decode(64 + 64, 4096)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_the_cuda_step_reads_nothing_back_to_the_host(arch: str) -> None:
    """On CUDA each value read back to the host (a count, a mask's nonzero, a bool) waits for
    the GPU's queue to drain. Tensors on the meta device have shapes and no values, so any
    such read raises: the static step (what the driver runs on CUDA, AuxK included) runs on
    them; the CPU's data-sized step, which reads its dead-latent counts, does not."""
    meta = torch.device("meta")
    n_seeds, bsz, d_in, d_sae = 3, 64, 32, 128
    shapes = [(n_seeds, d_in, d_sae), (n_seeds, d_sae), (n_seeds, d_sae, d_in), (n_seeds, d_in)]
    params = [torch.empty(s, device=meta) for s in shapes]
    x = torch.empty(n_seeds, bsz, d_in, device=meta)
    dead = torch.empty(n_seeds, d_sae, dtype=torch.bool, device=meta)
    out = sparse_step(params, x, x, dead, arch, 4, 1.0, True, dense_grads=True, static=True)
    assert [tuple(g.shape) for g in out.grads] == shapes
    assert out.fired.shape == (n_seeds, d_sae) and out.aux.shape == (n_seeds,)
    with pytest.raises(NotImplementedError, match="meta"):
        sparse_step(params, x, x, dead, arch, 4, 1.0, True, dense_grads=True, static=False)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("per_group", [1, 2])
def test_the_cuda_step_scores_large_problems_in_groups_of_seeds(
    arch: str, per_group: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above GPU_WHOLE_MAX_ELEMENTS score elements the static step scores seeds in groups
    (here of 1, or of 2 and 1); joined, the groups give the whole step's losses and gradients."""
    d_in, d_sae, bsz = 32, 128, 64
    saes = [build_sae(SAEConfig(architecture=arch, d_sae=d_sae, k=4), d_in, s) for s in range(3)]
    names_ = ("W_enc", "b_enc", "W_dec", "b_dec")
    params = [torch.stack([getattr(s, n).detach() for s in saes]) for n in names_]
    x = sparse_data(3 * bsz, seed=6).view(3, bsz, d_in)
    dead = torch.zeros(3, d_sae, dtype=torch.bool)
    dead[1, :10] = True
    dead[2, 30:80] = True
    sae_in = x - params[3][:, None, :]

    def step() -> list[torch.Tensor]:
        out = sparse_step(params, sae_in, x, dead, arch, 4, 1.0, True, static=True)
        return [out.mse, out.aux, out.l0, out.fired.float(), *out.grads]

    whole = step()
    limit = per_group * bsz * d_sae
    monkeypatch.setattr(husai.sae.batched.select, "GPU_WHOLE_MAX_ELEMENTS", limit)
    for a, b in zip(whole, step(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_members_with_rows_of_their_own_each_equal_training_alone(arch: str) -> None:
    # A trial's seeds on its rows beside two nulls' seeds on rows of their own, one stack; for
    # an architecture without the batched path (jumprelu) one after another.
    a = sparse_data(600, d_in=16, n_feat=48, seed=0)
    b = sparse_data(500, d_in=16, n_feat=48, seed=1)
    sae_cfg = SAEConfig(architecture=arch, d_sae=48, k=4, l0_coefficient=0.01)  # type: ignore[arg-type]
    cfg = SAETrainConfig(steps=30, batch_size=64, lr=3e-3, lr_warmup_steps=0, lr_decay_steps=0)
    ref = decoder(train_sae(sae_cfg, cfg, a, 9).sae)

    def pull() -> tuple[ConsistencyPenalty, float]:  # its matching is state: one per SAE
        return ConsistencyPenalty(ref, 5), 0.5

    pulls = [pull(), None, None, pull()]
    got = train_members(sae_cfg, cfg, [a, b, b, a], [0, 7, 8, 1], consistency=pulls)
    on_a = list(train_seeds(sae_cfg, cfg, a, [0, 1], consistency=[pull(), pull()]))
    on_b = list(train_seeds(sae_cfg, cfg, b, [7, 8]))
    for mine, alone in zip(got, [on_a[0], on_b[0], on_b[1], on_a[1]], strict=True):
        assert mine.seed == alone.seed
        torch.testing.assert_close(mine.decoder, alone.decoder, rtol=0, atol=1e-5)
    # The pulled members carry the consistency curve; the nulls do not.
    assert [names.CURVE_CONSISTENCY in m.curves.values for m in got] == [True, False, False, True]


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_a_bundle_with_a_k_per_member_equals_each_point_trained_alone(
    arch: str, step_kind: str
) -> None:
    """Grid points that differ only in k (a bundle) train as one stack, each member at its own
    k; each equals its point's seeds trained alone, and its saved SAE carries its k. AuxK is
    part of it (short dead window), in every way of scoring and decoding."""
    x = sparse_data(800, d_in=16, n_feat=48, seed=3)
    sae_cfg = SAEConfig(architecture=arch, d_sae=48, k=4)
    cfg = SAETrainConfig(
        steps=40, batch_size=64, lr=3e-3, lr_warmup_steps=0, lr_decay_steps=0, dead_window=5
    )
    ks, seeds = [2, 2, 8, 8, 4], [0, 1, 0, 1, 5]
    got = train_members(sae_cfg, cfg, [x] * 5, seeds, ks=ks)
    for mine, k, seed in zip(got, ks, seeds, strict=True):
        (alone,) = train_seeds(sae_cfg.model_copy(update={"k": k}), cfg, x, [seed])
        assert mine.seed == seed and mine.sae.cfg.k == k
        torch.testing.assert_close(mine.decoder, alone.decoder, rtol=0, atol=1e-5)
        assert mine.curves.values[names.CURVE_AUXK] == pytest.approx(
            alone.curves.values[names.CURVE_AUXK], rel=1e-4, abs=1e-6
        )
        if arch == "batchtopk":  # its inference threshold, each member's own
            torch.testing.assert_close(mine.sae.topk_threshold, alone.sae.topk_threshold)
    # AuxK was part of what was compared: some member had dead latents.
    assert any(v > 0 for m in got for v in m.curves.values[names.CURVE_AUXK])
