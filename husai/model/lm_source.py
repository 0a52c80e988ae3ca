"""Activations of a TransformerLens language model over a local corpus, streamed to disk.

`activations.source: transformer_lens` (config in `husai.config.lm`). Before any forward pass,
`plan` loads the model (offline), checks the hook, reads the corpus, splits it by document and
tokenises it, and refuses a budget the corpus cannot fill. `write_lm_set` then runs the model
batch by batch and writes the rows of each side into one `.npy` file per side, `chunk_rows` at
a time: extraction never holds the whole set in memory. `husai.run.stages` puts the folder
under the content-addressed cache (key: model, weights hash, hook, corpus hash, context size,
budget, split) and records it in MLflow like the task's activations.

Packing uses sae-lens (`concat_and_batch_sequences`: each context starts with BOS, documents
are joined by BOS). What sae-lens's ActivationsStore and caching runner lack, and is written
here: a held-out split by document (their packing joins documents before any split, so a
document could sit on both sides), leaving BOS and padding positions out of the rows, reading
a local .txt/.jsonl, and a cache key that covers the weights and the corpus content.

    husai extract --config my_lm.yaml
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import huggingface_hub.constants as hf_constants
import numpy as np
import torch
from sae_lens.tokenization_and_batching import (  # noqa: TID251 (its packing only)
    concat_and_batch_sequences,
)
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: TID251
from transformers import AutoTokenizer

from husai.config.experiment import ActivationsConfig
from husai.core.errors import ConfigError, first_line
from husai.core.hashing import stable_hash

LM_FORMAT = 1  # bump when the folder layout changes; part of every key
ROW_FILES = {"train": "train.npy", "eval": "eval.npy", "ood": "ood.npy"}
INDEX_FILES = {"train": "train_rows.npy", "eval": "eval_rows.npy", "ood": "ood_rows.npy"}
META_FILE = "meta.json"
EVAL_TOKENS = "eval_tokens.npy"
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"


# --- the model ---------------------------------------------------------------------------------
def save_lm_folder(model: HookedTransformer, folder: Path) -> Path:
    """A model folder `activations.lm.model` can name: its config, weights and tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in model.cfg.to_dict().items() if _json_safe(v)}
    (folder / MODEL_CONFIG).write_text(json.dumps({"hooked_transformer_config": cfg}, indent=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / MODEL_WEIGHTS)
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer: a corpus could not be tokenised")
    model.tokenizer.save_pretrained(str(folder))
    return folder


def _json_safe(v: object) -> bool:
    try:
        json.dumps(v)
    except TypeError:
        return False
    return True


@functools.cache
def load_lm(spec: str) -> HookedTransformer:
    """The model `spec` names: a folder from `save_lm_folder`, else a TransformerLens model name
    read from the local Hugging Face cache (offline: nothing is downloaded). Once per process."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return _load_folder(folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # huggingface_hub read the variable when it was imported; its check reads this flag.
    hf_constants.HF_HUB_OFFLINE = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer.from_pretrained(spec, device="cpu")
    except Exception as e:  # noqa: BLE001 (any failure to find it is the same one line)
        raise ConfigError(
            f"activations.lm.model: {spec!r} is not a folder, and not a TransformerLens model "
            f"in the local Hugging Face cache ({type(e).__name__}: {first_line(e)}); nothing "
            "is downloaded at run time"
        ) from None
    return model.eval()


def _load_folder(folder: Path) -> HookedTransformer:
    try:
        cfg = json.loads((folder / MODEL_CONFIG).read_text())["hooked_transformer_config"]
        state = load_file(str(folder / MODEL_WEIGHTS))
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer)
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 (a broken folder is one line naming it)
        raise ConfigError(
            f"activations.lm.model: {folder} is not a usable model folder "
            f"({type(e).__name__}: {first_line(e)}); it needs {MODEL_CONFIG}, {MODEL_WEIGHTS} "
            "and the tokenizer's files (husai.model.lm_source.save_lm_folder writes them)"
        ) from None
    return model.eval()


def model_sha256(model: HookedTransformer) -> str:
    """What makes the model's activations: its weights, its config (activation function, norms,
    rotary settings carry no weights) and its tokenizer's vocabulary and special tokens."""
    cfg = {k: v for k, v in model.cfg.to_dict().items() if _json_safe(v)}
    for volatile in ("device", "n_devices", "init_weights", "seed"):
        cfg.pop(volatile, None)
    tok = model.tokenizer
    vocab = {} if tok is None else {"vocab": tok.get_vocab(), "special": tok.all_special_tokens}
    extra = json.dumps({"cfg": cfg, "tokenizer": vocab}, sort_keys=True, default=str)
    return hashlib.sha256((weights_sha256(model) + extra).encode()).hexdigest()


def weights_sha256(model: HookedTransformer) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --- the corpus ----------------------------------------------------------------------------------
def read_corpus(path: Path, text_field: str) -> list[str]:
    """The documents of a .txt (one per non-empty line), .jsonl or `save_to_disk` folder."""
    where = f"activations.lm.corpus: {path}"
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
            return [str(t) for t in ds[text_field] if str(t).strip()]
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{where}: not a readable dataset folder ({first_line(e)})") from None
    if not path.is_file():
        raise ConfigError(f"{where}: no such file or folder")
    if path.suffix not in (".txt", ".jsonl"):
        raise ConfigError(f"{where}: expected a .txt or .jsonl file or a dataset folder")
    lines = path.read_text(encoding="utf-8").splitlines()
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


def corpus_sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
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
    weights_sha256: str
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
    docs = read_corpus(path, lm.text_field)
    sides = {"train": [d for d in docs if not held_out(d, cfg.eval_frac, cfg.split_seed)]}
    sides["eval"] = [d for d in docs if held_out(d, cfg.eval_frac, cfg.split_seed)]
    n_eval = max(1, round(lm.token_budget * cfg.eval_frac))
    budget = {"train": lm.token_budget - n_eval, "eval": n_eval}
    ood_sha = None
    if lm.ood_corpus is not None:
        # The shifted slice: half the held-out count, so that random held-out subsets of its
        # size (the OOD stress's null) are subsets, not the whole held-out set.
        ood_path = Path(lm.ood_corpus).expanduser()
        seen = set(docs)  # a document of the main corpus is never part of the shifted slice
        sides["ood"] = [d for d in read_corpus(ood_path, lm.text_field) if d not in seen]
        budget["ood"] = max(1, n_eval // 2)
        ood_sha = corpus_sha256(ood_path)
    for side in ("train", "eval"):
        if not sides[side]:
            raise ConfigError(
                f"activations.eval_frac: {cfg.eval_frac} leaves no {side} document among the "
                f"{len(docs)} of {path}"
            )
    tokens, rows = {}, {}
    for side in sides:
        tokens[side] = token_contexts(model, sides[side], lm.context_size)
        flat = torch.nonzero(usable(model, tokens[side], lm.exclude_bos).flatten()).flatten()
        if len(flat) < budget[side] and side == "ood":
            raise ConfigError(
                f"activations.lm.ood_corpus: {budget['ood']} positions needed (half the "
                f"held-out rows); its {len(sides['ood'])} documents give {len(flat)}"
            )
        if len(flat) < budget[side]:
            raise ConfigError(
                f"activations.lm.token_budget: {lm.token_budget} asks for {budget[side]} "
                f"{side} positions; the corpus's {len(sides[side])} {side} documents give "
                f"{len(flat)} (context_size {lm.context_size}, eval_frac {cfg.eval_frac})"
            )
        rows[side] = flat[: budget[side]]
        n_ctx = int(rows[side][-1]) // lm.context_size + 1
        tokens[side] = tokens[side][:n_ctx]  # the contexts the budget reaches, no more
    d_in = _width(model, cfg.hook, tokens["train"][:1])
    w_sha, c_sha = model_sha256(model), corpus_sha256(path)
    key = stable_hash(
        {
            "format": LM_FORMAT,
            "source": "transformer_lens",
            "weights_sha256": w_sha,
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
    return LMPlan(key, model, cfg.hook, d_in, tokens, rows, w_sha, c_sha, n_docs)


def random_base_plan(p: LMPlan, init_seed: int) -> LMPlan:
    """The random-base null's rows: the same architecture, freshly initialised (seeded, never
    trained), over the very same tokens and positions."""
    cfg = copy.deepcopy(p.model.cfg)
    cfg.seed = init_seed  # TransformerLens seeds its initialisation from the config
    cfg.init_weights = True  # a pretrained model's config says False: its weights come loaded
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer=p.model.tokenizer).eval()
    key = stable_hash({"null": "random_base", "of": p.key, "init_seed": init_seed})
    return replace(p, key=key, model=model, weights_sha256=model_sha256(model))


def _layer_stop(hook: str) -> int | None:
    parts = hook.split(".")
    return int(parts[1]) + 1 if parts[0] == "blocks" and parts[1].isdigit() else None


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
        written, pending = 0, []
        for start in range(0, tokens.shape[0], batch_size):
            lo, hi = start * size, (start + batch_size) * size
            a, b = torch.searchsorted(rows, torch.tensor([lo, hi])).tolist()  # rows ascend
            take = rows[a:b] - lo
            if len(take) == 0:  # every position of these contexts left out (BOS, padding)
                continue
            acts = _forward(p.model, p.hook, tokens[start : start + batch_size])
            pending.append(acts.reshape(-1, p.d_in)[take])
            if sum(len(x) for x in pending) >= chunk_rows:
                written = _flush(out, written, pending)
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
        "weights_sha256": p.weights_sha256,
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
