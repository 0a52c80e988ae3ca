"""Activations of a TransformerLens language model over a local corpus, streamed to disk.

`activations.source: transformer_lens` (config in `husai.config.lm`). Before any forward pass,
`plan` loads the model (offline), checks the hook, reads the corpus, splits it by document and
tokenises it, and refuses a budget the corpus cannot fill. `write_lm_set` then runs the model
batch by batch and writes the rows of each side into one `.npy` file per side, `chunk_rows` at
a time: extraction never holds the whole set in memory. `husai.run.stages` puts the folder
under the content-addressed cache (key: the model's hash (weights, config, tokenizer), hook,
corpus hash, context size, budget, split) and records it in MLflow like the task's activations.

Packing uses sae-lens (`concat_and_batch_sequences`: each context starts with BOS, documents
are joined by BOS). What sae-lens's ActivationsStore and caching runner lack, and is written
here: a held-out split by document (their packing joins documents before any split, so a
document could sit on both sides), leaving BOS and padding positions out of the rows, reading
a local .txt/.jsonl, and a cache key that covers the model and the corpus content.

    husai extract --config my_lm.yaml
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import numpy as np
import torch
from sae_lens.tokenization_and_batching import (  # noqa: TID251 (its packing only)
    concat_and_batch_sequences,
)
from transformer_lens import HookedTransformer  # noqa: TID251

from husai.config.experiment import ActivationsConfig, hook_layer
from husai.core.errors import ConfigError, first_line
from husai.core.hashing import stable_hash
from husai.model.lm_model import load_lm, model_sha256, model_sha256_of, quiet_constructor
from husai.model.rows import DiskRows

LM_FORMAT = 1  # bump when the folder layout changes; part of every key
ROW_FILES = {"train": "train.npy", "eval": "eval.npy", "ood": "ood.npy"}
INDEX_FILES = {"train": "train_rows.npy", "eval": "eval_rows.npy", "ood": "ood_rows.npy"}
META_FILE = "meta.json"
EVAL_TOKENS = "eval_tokens.npy"


# --- the corpus ----------------------------------------------------------------------------------
def read_corpus(path: Path, text_field: str) -> tuple[list[str], str]:
    """(documents, sha256 of the corpus's bytes) of a .txt (one document per non-empty line),
    .jsonl or `save_to_disk` folder."""
    where = f"activations.lm.corpus: {path}"
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
            docs = [str(t) for t in ds[text_field] if str(t).strip()]
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{where}: not a readable dataset folder ({first_line(e)})") from None
        return docs, _folder_sha256(path)
    if not path.is_file():
        raise ConfigError(f"{where}: no such file or folder")
    if path.suffix not in (".txt", ".jsonl"):
        raise ConfigError(f"{where}: expected a .txt or .jsonl file or a dataset folder")
    raw = path.read_bytes()
    return _documents(path, raw.decode("utf-8").splitlines(), text_field), _sha256(raw)


def _documents(path: Path, lines: list[str], text_field: str) -> list[str]:
    if path.suffix == ".txt":
        return [line for line in lines if line.strip()]
    docs = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)[text_field]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(
                f"{path}:{i}: not a JSON object with a {text_field!r} field "
                "(activations.lm.text_field)"
            ) from None
        if str(text).strip():
            docs.append(str(text))
    return docs


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _folder_sha256(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def held_out(doc: str, eval_frac: float, split_seed: int) -> bool:
    """A document's side, from its text and the seed alone: the same text is always on the
    same side, so no document is on both."""
    digest = hashlib.sha256(f"{split_seed}\0{doc}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_frac


def token_contexts(model: HookedTransformer, docs: list[str], context_size: int) -> torch.Tensor:
    """[n, context_size] token ids: the documents packed by sae-lens, each context opening with
    BOS and documents joined by BOS (a partial last context is dropped)."""
    tok = model.tokenizer
    assert tok is not None
    bos = tok.bos_token_id

    def each() -> Iterator[torch.Tensor]:
        for doc in docs:
            ids = tok(doc, add_special_tokens=False)["input_ids"]
            if ids:
                yield torch.tensor(ids, dtype=torch.long)

    batches = list(
        concat_and_batch_sequences(
            each(), context_size, begin_batch_token_id=bos, sequence_separator_token_id=bos
        )
    )
    return torch.stack(batches) if batches else torch.zeros(0, context_size, dtype=torch.long)


def usable(model: HookedTransformer, tokens: torch.Tensor, exclude_bos: bool) -> torch.Tensor:
    """[n, context] mask of the positions that become rows."""
    tok = model.tokenizer
    keep = torch.ones_like(tokens, dtype=torch.bool)
    if exclude_bos and tok is not None:
        for special in {tok.bos_token_id, tok.pad_token_id} - {None}:
            keep &= tokens != special
    return keep


# --- the plan and the rows -----------------------------------------------------------------------
@dataclass(frozen=True)
class LMPlan:
    """Everything about an LM activation set that is known before any forward pass."""

    key: str
    model: HookedTransformer
    hook: str
    d_in: int
    tokens: dict[str, torch.Tensor]  # side -> [n, context] token ids
    rows: dict[str, torch.Tensor]  # side -> [n_rows] flat positions (context * size + pos)
    model_sha256: str  # weights, config and tokenizer
    corpus_sha256: str
    n_docs: dict[str, int]


def plan(cfg: ActivationsConfig) -> LMPlan:
    """Load, check, split and tokenise; raise ConfigError naming the field on anything wrong."""
    lm = cfg.lm
    assert lm is not None
    model = load_lm(lm.model)
    if cfg.hook not in model.hook_dict or cfg.hook.endswith(("hook_pattern", "hook_attn_scores")):
        near = [h for h in model.hook_dict if h.startswith("blocks.0.hook_")]
        raise ConfigError(
            f"activations.hook: {cfg.hook!r} is not a per-token hook of {lm.model} "
            f"(e.g. {', '.join(near[:4])})"
        )
    if lm.context_size > model.cfg.n_ctx:
        raise ConfigError(
            f"activations.lm.context_size: {lm.context_size} > the model's n_ctx {model.cfg.n_ctx}"
        )
    path = Path(lm.corpus).expanduser()
    ood = None if lm.ood_corpus is None else Path(lm.ood_corpus).expanduser()
    split = _split(
        lm.model, path, ood, lm.text_field, lm.context_size, cfg.eval_frac, cfg.split_seed
    )
    sides, c_sha, ood_sha = split.docs, split.corpus_sha256, split.ood_sha256
    n_eval = max(1, round(lm.token_budget * cfg.eval_frac))
    budget = {"train": lm.token_budget - n_eval, "eval": n_eval}
    if ood is not None:
        # The shifted slice: half the held-out count, so that random held-out subsets of its
        # size (the OOD stress's null) are subsets, not the whole held-out set.
        budget["ood"] = max(1, n_eval // 2)
    for side in ("train", "eval"):
        if not sides[side]:
            raise ConfigError(
                f"activations.eval_frac: {cfg.eval_frac} leaves no {side} document among the "
                f"{split.n_docs} of {path}"
            )
    tokens, rows = {}, {}
    for side in sides:
        # An OOD corpus of nothing but main-corpus documents has no contexts: 0 positions.
        tokens[side] = split.tokens.get(side, torch.zeros(0, lm.context_size, dtype=torch.long))
        flat = torch.nonzero(usable(model, tokens[side], lm.exclude_bos).flatten()).flatten()
        if len(flat) < budget[side]:
            have = f"{len(sides[side])} {side} documents give {len(flat)}"
            raise ConfigError(
                f"activations.lm.ood_corpus: {budget[side]} positions needed (half the "
                f"held-out rows); its {have}"
                if side == "ood"
                else f"activations.lm.token_budget: {lm.token_budget} asks for {budget[side]} "
                f"{side} positions; the corpus's {have} (context_size {lm.context_size}, "
                f"eval_frac {cfg.eval_frac})"
            )
        rows[side] = flat[: budget[side]]
        n_ctx = int(rows[side][-1]) // lm.context_size + 1
        tokens[side] = tokens[side][:n_ctx]  # the contexts the budget reaches, no more
    d_in = _width(model, cfg.hook, tokens["train"][:1])
    m_sha = model_sha256_of(lm.model)
    key = stable_hash(
        {
            "format": LM_FORMAT,
            "source": "transformer_lens",
            "model_sha256": m_sha,
            "corpus_sha256": c_sha,
            **({} if ood_sha is None else {"ood_corpus_sha256": ood_sha}),
            "hook": cfg.hook,
            "split_seed": cfg.split_seed,
            "eval_frac": cfg.eval_frac,
            **{
                k: v
                for k, v in lm.identity().items()
                if k not in ("model", "corpus", "ood_corpus") and v is not None
            },
        }
    )
    n_docs = {side: len(docs) for side, docs in sides.items()}
    return LMPlan(key, model, cfg.hook, d_in, tokens, rows, m_sha, c_sha, n_docs)


@dataclass(frozen=True)
class _Split:
    """A corpus split by document and tokenised: what every plan over the same corpus, context
    and split shares, whatever its hook and budget."""

    docs: dict[str, list[str]]  # side -> documents
    tokens: dict[str, torch.Tensor]  # side -> [n, context] token ids (never modified)
    corpus_sha256: str
    ood_sha256: str | None
    n_docs: int  # in the main corpus


@functools.lru_cache(maxsize=2)
def _split_cached(
    spec: str, path: Path, ood: Path | None, text_field: str, context: int, eval_frac: float,
    split_seed: int, stamp: tuple[tuple[int, int], ...],
) -> _Split:  # fmt: skip
    docs, c_sha = read_corpus(path, text_field)
    sides: dict[str, list[str]] = {"train": [], "eval": []}
    for d in docs:
        sides["eval" if held_out(d, eval_frac, split_seed) else "train"].append(d)
    ood_sha = None
    if ood is not None:
        ood_docs, ood_sha = read_corpus(ood, text_field)
        seen = set(docs)  # a document of the main corpus is never part of the shifted slice
        sides["ood"] = [d for d in ood_docs if d not in seen]
    model = load_lm(spec)
    tokens = {side: token_contexts(model, ds, context) for side, ds in sides.items() if ds}
    return _Split(sides, tokens, c_sha, ood_sha, len(docs))


def _split(
    spec: str, path: Path, ood: Path | None, text_field: str, context: int, eval_frac: float,
    split_seed: int,
) -> _Split:  # fmt: skip
    """A sweep plans one set per hook and budget over one corpus: it is read, split and
    tokenised once. The files' size and mtime are in the cache key, so an edited corpus is
    read again (a folder's own size and mtime: `save_to_disk` writes new files into it)."""
    stamp = tuple(_stamp(f) for f in (path, ood) if f is not None)
    return _split_cached(spec, path, ood, text_field, context, eval_frac, split_seed, stamp)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:  # missing: read_corpus says so, naming the field
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def random_base_plan(p: LMPlan, init_seed: int) -> LMPlan:
    """The random-base null's rows: the same architecture, freshly initialised (seeded, never
    trained), over the very same tokens and positions."""
    cfg = copy.deepcopy(p.model.cfg)
    cfg.seed = init_seed  # TransformerLens seeds its initialisation from the config
    cfg.init_weights = True  # a pretrained model's config says False: its weights come loaded
    with torch.random.fork_rng(devices=[]), quiet_constructor():
        model = HookedTransformer(cfg, tokenizer=p.model.tokenizer).eval()
    key = stable_hash({"null": "random_base", "of": p.key, "init_seed": init_seed})
    return replace(p, key=key, model=model, model_sha256=model_sha256(model))


def _layer_stop(hook: str) -> int | None:
    layer = hook_layer(hook)
    return None if layer is None else layer + 1


def _forward(model: HookedTransformer, hook: str, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, context, d] activations at `hook` (heads flattened), on the CPU."""
    dev = next(model.parameters()).device
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            tokens.to(dev), names_filter=[hook], stop_at_layer=_layer_stop(hook)
        )
    act = cache[hook]
    return act.reshape(act.shape[0], act.shape[1], -1).float().cpu()


def _width(model: HookedTransformer, hook: str, tokens: torch.Tensor) -> int:
    try:
        return int(_forward(model, hook, tokens).shape[-1])
    except KeyError:  # in hook_dict, but off in this model (e.g. hook_result without use_*)
        raise ConfigError(
            f"activations.hook: {hook!r} never fires in this model (a hook its config turns off)"
        ) from None


def write_lm_set(p: LMPlan, folder: Path, batch_size: int, chunk_rows: int) -> Path:
    """Run the model over both sides and write them into `folder`: rows go to disk whenever
    `chunk_rows` of them are waiting, straight into a preallocated `.npy` file."""
    folder.mkdir(parents=True, exist_ok=True)
    for side in p.tokens:
        tokens, rows = p.tokens[side], p.rows[side]
        size = tokens.shape[1]
        out = np.lib.format.open_memmap(
            folder / ROW_FILES[side], mode="w+", dtype=np.float32, shape=(len(rows), p.d_in)
        )
        written, waiting, pending = 0, 0, []
        for start in range(0, tokens.shape[0], batch_size):
            lo, hi = start * size, (start + batch_size) * size
            a, b = torch.searchsorted(rows, torch.tensor([lo, hi])).tolist()  # rows ascend
            take = rows[a:b] - lo
            if len(take) == 0:  # every position of these contexts left out (BOS, padding)
                continue
            acts = _forward(p.model, p.hook, tokens[start : start + batch_size])
            pending.append(acts.reshape(-1, p.d_in)[take])
            waiting += len(take)
            if waiting >= chunk_rows:
                written, waiting = _flush(out, written, pending), 0
        written = _flush(out, written, pending)
        assert written == len(rows), (written, len(rows))
        out.flush()
        del out  # closes the map before the folder is checksummed
        np.save(folder / INDEX_FILES[side], rows.numpy())
    # The held-out contexts themselves: loss_recovered splices the SAE back into them.
    np.save(folder / EVAL_TOKENS, p.tokens["eval"].numpy())
    meta = {
        "source": "transformer_lens",
        "format": LM_FORMAT,
        "key": p.key,
        "hook": p.hook,
        "d_in": p.d_in,
        "model_sha256": p.model_sha256,
        "corpus_sha256": p.corpus_sha256,
        "n_docs": p.n_docs,
        "n_rows": {side: len(rows) for side, rows in p.rows.items()},
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def _flush(out: np.ndarray, written: int, pending: list[torch.Tensor]) -> int:
    if not pending:
        return written
    block = torch.cat(pending).numpy()
    out[written : written + len(block)] = block
    pending.clear()
    return written + len(block)


def read_lm_rows(
    directory: Path, in_memory_limit: int
) -> tuple[torch.Tensor | DiskRows, dict[str, torch.Tensor]]:
    """(SAE-train rows, the other tensors by name) of an entry `write_lm_set` wrote; the
    SAE-train rows stay on disk (`DiskRows`) when their file exceeds `in_memory_limit` bytes."""
    sides = [s for s in ROW_FILES if (directory / ROW_FILES[s]).exists()]
    tensors = {f"{s}_rows": torch.from_numpy(np.load(directory / INDEX_FILES[s])) for s in sides}
    for s in sides:
        if s != "train":
            tensors[s] = torch.from_numpy(np.load(directory / ROW_FILES[s]))
    path = directory / ROW_FILES["train"]
    big = path.stat().st_size > in_memory_limit
    return (DiskRows(path) if big else torch.from_numpy(np.load(path))), tensors
