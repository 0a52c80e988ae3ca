"""A TransformerLens language model for `activations.source: transformer_lens`: loaded from a
folder or, offline, from the local Hugging Face cache, and hashed (weights, config, tokenizer)
for the activation set's cache key. `husai.model.lm_source` runs it over a corpus.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import huggingface_hub.constants as hf_constants
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: TID251
from transformers import AutoTokenizer

from husai.core.errors import ConfigError, described

MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"


def save_lm_folder(model: HookedTransformer, folder: Path) -> Path:
    """A model folder `activations.lm.model` can name: its config, weights and tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = _cfg_dict(model)
    (folder / MODEL_CONFIG).write_text(json.dumps({"hooked_transformer_config": cfg}, indent=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / MODEL_WEIGHTS)
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer: a corpus could not be tokenised")
    model.tokenizer.save_pretrained(str(folder))
    return folder


def _cfg_dict(model: HookedTransformer) -> dict[str, object]:
    """The model's config, the JSON-writable part of it (device objects and dtypes are not)."""
    return {k: v for k, v in model.cfg.to_dict().items() if _json_safe(v)}


def _json_safe(v: object) -> bool:
    try:
        json.dumps(v)
    except TypeError:
        return False
    return True


@contextmanager
def quiet_constructor() -> Iterator[None]:
    """HookedTransformer's constructor warns that it is deprecated for TransformerBridge."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@contextmanager
def _model_refused(what: str, hint: str) -> Iterator[None]:
    """Any failure to load the model is one line naming activations.lm.model."""
    try:
        with quiet_constructor():
            yield
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"activations.lm.model: {what} ({described(e)}); {hint}") from None


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
    what = f"{spec!r} is not a folder, and not a TransformerLens model in the local cache"
    with _model_refused(what, "nothing is downloaded at run time"):
        model = HookedTransformer.from_pretrained(spec, device="cpu")
    return model.eval()


def _load_folder(folder: Path) -> HookedTransformer:
    hint = (
        f"it needs {MODEL_CONFIG}, {MODEL_WEIGHTS} and the tokenizer's files "
        "(husai.model.lm_model.save_lm_folder writes them)"
    )
    with _model_refused(f"{folder} is not a usable model folder", hint):
        cfg = json.loads((folder / MODEL_CONFIG).read_text())["hooked_transformer_config"]
        state = load_file(str(folder / MODEL_WEIGHTS))
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer)
        model.load_state_dict(state)
    return model.eval()


def model_sha256(model: HookedTransformer) -> str:
    """What makes the model's activations: its weights, its config (activation function, norms,
    rotary settings carry no weights) and its tokenizer's vocabulary and special tokens."""
    cfg = _cfg_dict(model)
    for volatile in ("device", "n_devices", "init_weights", "seed"):
        cfg.pop(volatile, None)
    tok = model.tokenizer
    vocab = {} if tok is None else {"vocab": tok.get_vocab(), "special": tok.all_special_tokens}
    extra = json.dumps({"cfg": cfg, "tokenizer": vocab}, sort_keys=True, default=str)
    return hashlib.sha256((weights_sha256(model) + extra).encode()).hexdigest()


@functools.cache
def model_sha256_of(spec: str) -> str:
    """`model_sha256` of the model `spec` names, once per process (hashing every weight of
    a real model takes a while, and each trial plans its set)."""
    return model_sha256(load_lm(spec))


def weights_sha256(model: HookedTransformer) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
