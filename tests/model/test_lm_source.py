"""The language-model activation source on a tiny randomly initialised TransformerLens model
and a corpus the test writes (nothing is downloaded): streamed extraction equals a whole-set
forward pass, documents never straddle the split, BOS positions never become rows, and every
bad input is one line naming its field before any forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import husai.model.lm_source as source
from husai.config.experiment import ActivationsConfig
from husai.core.errors import ConfigError
from husai.measure.lm_splice import lm_splice
from husai.model.activations import load_activations
from husai.model.lm_model import load_lm
from husai.model.lm_source import held_out, plan, read_corpus, write_lm_set
from tests.helpers import lm_activations_cfg, tiny_lm


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


def _cfg(lm: tuple[Path, Path], **over: object) -> ActivationsConfig:
    a = lm_activations_cfg(*lm)
    return ActivationsConfig.model_validate({**a, "lm": {**a["lm"], **over}})


def test_streamed_extraction_equals_one_forward_pass(lm: tuple[Path, Path], tmp_path: Path) -> None:
    p = plan(_cfg(lm))
    # 3 sequences per forward, rows written 50 at a time, vs everything at once.
    write_lm_set(p, tmp_path / "streamed", batch_size=3, chunk_rows=50)
    write_lm_set(p, tmp_path / "whole", batch_size=10_000, chunk_rows=10**9)
    streamed, whole = load_activations(tmp_path / "streamed"), load_activations(tmp_path / "whole")
    for side in ("train", "eval"):
        with torch.inference_mode():
            _, cache = p.model.run_with_cache(p.tokens[side], names_filter=[p.hook])
        expected = cache[p.hook].reshape(-1, p.d_in)[p.rows[side]]
        assert torch.equal(getattr(streamed, side), expected)
        assert torch.equal(getattr(whole, side), expected)
    assert streamed.train.shape == (1200, 32) and streamed.eval.shape == (300, 32)
    assert streamed.p is None and streamed.hook == "blocks.1.hook_resid_post"


def test_documents_never_straddle_the_split(lm: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, corpus = lm
    docs, _ = read_corpus(corpus, "text")
    # The same text twice: one side for both copies, whatever its position.
    dup = tmp_path / "dup.jsonl"
    dup.write_text(corpus.read_text() + json.dumps({"text": docs[0]}) + "\n")
    p = plan(_cfg((model_dir, dup)))
    sides = {
        s: {d for d in docs + [docs[0]] if held_out(d, 0.2, 0) == (s == "eval")} for s in p.n_docs
    }
    assert sides["train"].isdisjoint(sides["eval"]) and sides["train"] and sides["eval"]
    assert p.n_docs["train"] + p.n_docs["eval"] == len(docs) + 1
    # Every token of a side's contexts comes from that side's documents.
    tok = p.model.tokenizer
    assert tok is not None
    for side, texts in sides.items():
        words = {w for t in texts for w in t.split()}
        seen = set(tok.convert_ids_to_tokens(p.tokens[side].flatten().tolist())) - {"<bos>"}
        assert seen <= words
    # Another seed puts documents elsewhere.
    assert (
        plan(_cfg(lm)).key
        != plan(ActivationsConfig.model_validate({**lm_activations_cfg(*lm), "split_seed": 1})).key
    )


def test_bos_positions_are_never_rows(lm: tuple[Path, Path]) -> None:
    p = plan(_cfg(lm))
    tok = p.model.tokenizer
    assert tok is not None
    for side in ("train", "eval"):
        flat = p.tokens[side].flatten()
        assert (flat == tok.bos_token_id).any()  # every context opens with BOS
        assert not (flat[p.rows[side]] == tok.bos_token_id).any()
    kept = plan(_cfg(lm, exclude_bos=False))
    assert (kept.tokens["train"].flatten()[kept.rows["train"]] == tok.bos_token_id).any()


def test_the_key_covers_what_changes_the_rows(lm: tuple[Path, Path], tmp_path: Path) -> None:
    key = plan(_cfg(lm)).key
    assert plan(_cfg(lm, batch_size=2, chunk_rows=7)).key == key  # speed and memory only
    assert plan(_cfg(lm, token_budget=1400)).key != key
    assert plan(_cfg(lm, exclude_bos=False)).key != key
    a = lm_activations_cfg(*lm)
    assert plan(ActivationsConfig.model_validate({**a, "eval_frac": 0.3})).key != key
    ood = tmp_path / "ood.jsonl"
    ood.write_text('{"text": "zz zz zz zz zz zz zz zz zz zz zz zz zz zz zz zz zz zz zz zz"}\n' * 30)
    assert plan(_cfg(lm, ood_corpus=str(ood))).key != key
    assert plan(_cfg(lm, context_size=12)).key != key
    other = ActivationsConfig.model_validate(
        {**lm_activations_cfg(*lm), "hook": "blocks.0.hook_resid_post"}
    )
    assert plan(other).key != key
    changed = tmp_path / "corpus.jsonl"
    changed.write_text(lm[1].read_text().replace("w1 ", "w2 ", 1))
    assert plan(_cfg((lm[0], changed))).key != key


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"token_budget": 10**6}, "activations.lm.token_budget"),
        ({"context_size": 64}, "activations.lm.context_size"),
        ({"corpus": "/nonexistent/corpus.jsonl"}, "activations.lm.corpus"),
        ({"model": "/nonexistent-model-folder"}, "activations.lm.model"),
    ],
)
def test_bad_input_names_its_field(lm: tuple[Path, Path], over: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        plan(_cfg(lm, **over))


def test_bad_hook_and_bad_corpus_line(lm: tuple[Path, Path], tmp_path: Path) -> None:
    bad_hook = ActivationsConfig.model_validate(
        {**lm_activations_cfg(*lm), "hook": "blocks.0.attn.hook_pattern"}
    )
    with pytest.raises(ConfigError, match="activations.hook"):
        plan(bad_hook)
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": "w1 w2"}\nnot json\n')
    with pytest.raises(ConfigError, match=rf"{corpus}:2: .*'text'"):
        plan(_cfg((lm[0], corpus)))
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    with pytest.raises(ConfigError, match="activations.lm.model: .*model"):
        load_lm(str(broken))


def test_config_needs_lm_with_the_source() -> None:
    with pytest.raises(ValueError, match="activations.lm"):
        ActivationsConfig.model_validate({"source": "transformer_lens"})
    with pytest.raises(ValueError, match="source: transformer_lens"):
        ActivationsConfig.model_validate({"lm": {"model": "m", "corpus": "c.txt"}})


def test_loss_recovered_is_one_for_the_rows_and_zero_for_their_mean(
    lm: tuple[Path, Path], tmp_path: Path
) -> None:
    """The splice can fail: a reconstruction that learned nothing (the mean, or noise) scores
    0 or below, the exact rows score 1."""
    p = plan(_cfg(lm))
    folder = write_lm_set(p, tmp_path / "set", batch_size=8, chunk_rows=100)
    acts = load_activations(folder)
    splice = lm_splice(p.model, p.hook, folder, acts.train)
    assert splice is not None and splice.ablate > splice.clean and splice.zero > splice.clean
    exact = splice.recovered(acts.eval)
    assert exact.mean == pytest.approx(1.0, abs=1e-6)
    assert exact.zero == pytest.approx(1.0, abs=1e-6)
    mean = splice.recovered(acts.train.mean(dim=0).expand_as(acts.eval))
    assert mean.mean == pytest.approx(0.0, abs=1e-6)
    assert splice.recovered(torch.zeros_like(acts.eval)).zero == pytest.approx(0.0, abs=1e-6)
    noise = splice.recovered(torch.randn_like(acts.eval) * acts.eval.std())
    assert noise.mean is not None and noise.mean < 0.5
    assert noise.zero is not None and noise.zero < 0.5


def test_a_trial_from_disk_equals_the_trial_in_memory(
    lm: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set over the memory limit keeps its SAE-train rows on disk; the trial on it trains
    the same SAEs and measures the same numbers (the covariance null to float64 rounding)."""
    from husai.config.experiment import ExperimentConfig
    from husai.measure.trial import run_trial
    from husai.model.rows import DiskRows
    from tests.helpers import TRIAL

    folder = write_lm_set(plan(_cfg(lm)), tmp_path / "set", batch_size=8, chunk_rows=100)
    cfg = ExperimentConfig.model_validate({**TRIAL, "activations": lm_activations_cfg(*lm)})
    in_memory = load_activations(folder)
    monkeypatch.setenv("HUSAI_MAX_ROWS_IN_MEMORY_MIB", "0")
    on_disk = load_activations(folder)
    assert isinstance(on_disk.train, DiskRows) and isinstance(in_memory.train, torch.Tensor)
    a = run_trial(cfg, in_memory, tmp_path / "a", progress=False)
    b = run_trial(cfg, on_disk, tmp_path / "b", progress=False)
    for sa, sb in zip(a.seeds, b.seeds, strict=True):
        assert torch.equal(sa.trained.decoder, sb.trained.decoder)
    assert a.recon_mean == b.recon_mean
    for name, mat in a.stability.trained.items():
        assert np.array_equal(mat, b.stability.trained[name], equal_nan=True)
    for name, mat in a.stability.nulls["covariance"].items():
        np.testing.assert_allclose(mat, b.stability.nulls["covariance"][name], atol=1e-5)


def test_the_ood_stress_reads_a_second_corpus(lm: tuple[Path, Path], tmp_path: Path) -> None:
    """The OOD stress sees the second corpus: words the model never saw (every one the
    tokenizer's unknown token) reconstruct worse than a held-out subset's noise allows, and
    worse than a fresh sample of the training distribution."""
    from husai.config.experiment import ExperimentConfig
    from husai.measure.trial import run_trial
    from tests.helpers import TRIAL, lm_corpus

    train = {"steps": 200, "batch_size": 128, "lr_warmup_steps": 10, "lr_decay_steps": 20}
    ratios = {}
    unknown = tmp_path / "shifted.jsonl"
    unknown.write_text(
        "".join(json.dumps({"text": " ".join(["zz"] * (10 + i))}) + "\n" for i in range(30))
    )
    for name, ood in (
        ("same", lm_corpus(tmp_path / "same.jsonl", 40, seed=5)),
        ("shifted", unknown),
    ):
        a = {**lm_activations_cfg(*lm)}
        a["lm"] = {**a["lm"], "ood_corpus": str(ood)}
        p = plan(ActivationsConfig.model_validate(a))
        acts = load_activations(write_lm_set(p, tmp_path / name, batch_size=8, chunk_rows=500))
        assert acts.ood is not None and acts.ood.shape == (150, 32)  # half the held-out rows
        evals = {"transcoder": False, "ood": True, "probing": False, "contrastive": False}
        cfg = ExperimentConfig.model_validate(
            {**TRIAL, "train": {**TRIAL["train"], **train}, "activations": a, "evals": evals}
        )
        result = run_trial(cfg, acts, tmp_path / f"w-{name}", progress=False)
        assert result.evals is not None and result.evals.ood is not None
        ratios[name] = [(r.fvu_ratio, r.null_q95) for r in result.evals.ood.values()]
    assert all(ratio > q95 for ratio, q95 in ratios["shifted"])
    assert all(s[0] < sh[0] for s, sh in zip(ratios["same"], ratios["shifted"], strict=True))
    with pytest.raises(ConfigError, match="activations.lm.ood_corpus"):
        small = lm_corpus(tmp_path / "small.jsonl", 1, seed=9)
        plan(_cfg(lm, ood_corpus=str(small)))
    # The main corpus's own documents are never the shifted slice: all dropped, too few left.
    with pytest.raises(ConfigError, match="activations.lm.ood_corpus"):
        plan(_cfg(lm, ood_corpus=str(lm[1])))


def test_the_random_base_twin_is_seeded_and_reads_the_same_tokens(
    lm: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from husai.model.lm_source import random_base_plan

    p = plan(_cfg(lm))
    # A pretrained model's config says init_weights False; the twin is initialised anyway.
    monkeypatch.setattr(p.model.cfg, "init_weights", False)
    a, b, other = random_base_plan(p, 0), random_base_plan(p, 0), random_base_plan(p, 1)
    assert a.model_sha256 == b.model_sha256 != other.model_sha256
    assert all(bool(torch.isfinite(t).all()) for t in a.model.parameters())
    assert a.model.W_E.std() > 0
    assert a.model_sha256 != p.model_sha256 and a.key != p.key
    assert all(
        torch.equal(a.tokens[s], p.tokens[s]) and torch.equal(a.rows[s], p.rows[s])
        for s in p.tokens
    )


def test_plans_over_one_corpus_read_and_tokenise_it_once(
    lm: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep plans one set per hook and budget: the corpus is read once for all of them, and
    read again once it changes. (Counted through a wrapper: this test is about the cache.)"""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(lm[1].read_text())
    reads: list[Path] = []

    def counted(path: Path, text_field: str) -> tuple[list[str], str]:
        reads.append(path)
        return read_corpus(path, text_field)

    monkeypatch.setattr(source, "read_corpus", counted)
    cfg = lm_activations_cfg(lm[0], corpus)
    a = plan(ActivationsConfig.model_validate(cfg))
    cfg["lm"] = {**cfg["lm"], "token_budget": 800}
    b = plan(ActivationsConfig.model_validate({**cfg, "hook": "blocks.0.hook_resid_post"}))
    assert reads == [corpus] and a.key != b.key
    assert torch.equal(a.tokens["train"][: len(b.tokens["train"])], b.tokens["train"])
    with corpus.open("a") as f:  # one more document: a new corpus
        f.write(json.dumps({"text": "w1 w8 w27 w16 w35 w2 w17 w20 w7 w18"}) + "\n")
    c = plan(ActivationsConfig.model_validate(cfg))
    assert reads == [corpus, corpus] and c.corpus_sha256 != b.corpus_sha256
