"""The base transformer: build it from a config, train it on modular addition, save and load it.

Training is full-batch AdamW with weight decay on a fixed share of all p^2 pairs, until the
held-out accuracy reaches the target (generalisation, i.e. grokking) or the step budget ends.
Functions here return values and never touch MLflow (`husai.run.stages` finds a registered
model with the same config hash, or trains one here and records it).

    python -m husai train-base --preset quick
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: TID251 (the owner)

from husai.config.experiment import BaseModelConfig, ExperimentConfig, TaskConfig
from husai.core import device as devices
from husai.core.errors import InputError, first_line
from husai.core.repro import deterministic
from husai.model.task import READOUT_POSITION, SEQ_LEN, make_modular_data, split_indices

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(InputError):
    """A saved base model that cannot be loaded; the message names the file."""


@dataclass
class BaseCurves:
    """Curves sampled every `eval_every` steps (and at the last step)."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)


@dataclass
class BaseTrainResult:
    model: HookedTransformer
    curves: BaseCurves
    steps: int
    seconds: float
    train_acc: float
    test_acc: float
    target_test_acc: float

    @property
    def generalised(self) -> bool:
        return self.test_acc >= self.target_test_acc

    @property
    def outcome(self) -> str:
        """generalised, memorised (fits the train pairs only) or undertrained."""
        if self.generalised:
            return "generalised"
        return "memorised" if self.train_acc >= self.target_test_acc else "undertrained"


def build_model(task: TaskConfig, base: BaseModelConfig) -> HookedTransformer:
    """A freshly initialised HookedTransformer, seeded without touching the global RNG."""
    cfg = HookedTransformerConfig(
        n_layers=base.n_layers,
        d_model=base.d_model,
        n_heads=base.n_heads,
        d_head=base.d_head,
        d_mlp=base.d_mlp,
        act_fn=base.act_fn,
        normalization_type="LN" if base.layernorm else None,
        d_vocab=task.p + 1,
        d_vocab_out=task.p,
        n_ctx=SEQ_LEN,
        init_weights=True,
        device="cpu",
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # HookedTransformer is deprecated in favour of TransformerBridge, but sae-lens and the
        # interpretability tools users pair with HUSAI still load HookedTransformer checkpoints.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.manual_seed(base.init_seed)
        return HookedTransformer(cfg)


def readout_logits(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Logits at the '=' position, where the answer is predicted."""
    return model(tokens)[:, READOUT_POSITION, :]


def train_base(
    cfg: ExperimentConfig,
    progress: bool = True,
    on_eval: Callable[[int, float], None] | None = None,
) -> BaseTrainResult:
    """Full-batch AdamW until held-out accuracy >= target or `max_steps`; deterministic on CPU."""
    with deterministic():
        return _train_base(cfg, progress, on_eval)


def _train_base(
    cfg: ExperimentConfig,
    progress: bool,
    on_eval: Callable[[int, float], None] | None,
) -> BaseTrainResult:
    task, base = cfg.task, cfg.base
    data = make_modular_data(task.p)
    train_idx, test_idx = split_indices(len(data), task.train_frac, task.data_seed)
    # Trained on the process's device; initialised on the CPU (the same weights everywhere)
    # and returned on the CPU, so what is saved and extracted is the same wherever it trained.
    dev = devices.active()
    x_tr, y_tr = data.tokens[train_idx].to(dev), data.labels[train_idx].to(dev)
    x_te, y_te = data.tokens[test_idx].to(dev), data.labels[test_idx].to(dev)

    model = build_model(task, base)
    if dev.type != "cpu":
        model = model.to(dev, print_details=False)
    opt = torch.optim.AdamW(
        model.parameters(), lr=base.lr, weight_decay=base.weight_decay, betas=base.betas
    )
    curves = BaseCurves()
    bar = tqdm(total=base.max_steps, desc="base model", disable=not progress, unit="step")
    start = time.perf_counter()
    step, train_acc, test_acc = 0, 0.0, 0.0
    for step in range(1, base.max_steps + 1):
        logits = readout_logits(model, x_tr)
        loss = F.cross_entropy(logits, y_tr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % base.eval_every and step != base.max_steps:
            continue
        with torch.no_grad():
            # Re-evaluated after the step so that train and test numbers describe the same weights.
            tr_logits = readout_logits(model, x_tr)
            te_logits = readout_logits(model, x_te)
        train_acc = (tr_logits.argmax(-1) == y_tr).float().mean().item()
        test_acc = (te_logits.argmax(-1) == y_te).float().mean().item()
        curves.steps.append(step)
        curves.train_loss.append(F.cross_entropy(tr_logits, y_tr).item())
        curves.test_loss.append(F.cross_entropy(te_logits, y_te).item())
        curves.train_acc.append(train_acc)
        curves.test_acc.append(test_acc)
        bar.update(step - bar.n)
        bar.set_postfix(train_acc=f"{train_acc:.3f}", test_acc=f"{test_acc:.3f}")
        if on_eval is not None:
            on_eval(step, test_acc)
        if test_acc >= base.target_test_acc:
            break
    bar.close()
    if dev.type != "cpu":
        model = model.to("cpu", print_details=False)
    return BaseTrainResult(
        model=model,
        curves=curves,
        steps=step,
        seconds=time.perf_counter() - start,
        train_acc=train_acc,
        test_acc=test_acc,
        target_test_acc=base.target_test_acc,
    )


def evaluate_accuracy(model: HookedTransformer, task: TaskConfig) -> tuple[float, float]:
    """(train accuracy, held-out accuracy) on the config's split of pairs."""
    data = make_modular_data(task.p)
    train_idx, test_idx = split_indices(len(data), task.train_frac, task.data_seed)
    with torch.no_grad():
        preds = readout_logits(model, data.tokens).argmax(-1)
    correct = (preds == data.labels).float()
    return correct[train_idx].mean().item(), correct[test_idx].mean().item()


def save_base(model: HookedTransformer, cfg: ExperimentConfig, directory: Path) -> Path:
    """Write model.safetensors + config.json (task and base sections) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    # IGNORE/mask buffers are rebuilt from the config; store parameters only.
    weights = {k: v.detach().contiguous() for k, v in model.named_parameters()}
    save_file(weights, str(directory / WEIGHTS_FILE))
    meta = {
        "task": cfg.task.model_dump(mode="json"),
        "base": cfg.base.model_dump(mode="json"),
        "base_hash": cfg.base_hash(),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def load_base(directory: Path) -> tuple[HookedTransformer, TaskConfig, BaseModelConfig]:
    """Inverse of `save_base`; a missing or corrupt file raises CheckpointError naming it."""
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    try:
        meta = json.loads(cfg_path.read_text())
        task = TaskConfig.model_validate(meta["task"])
        base = BaseModelConfig.model_validate(meta["base"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{cfg_path}: not a HUSAI base-model config ({first_line(e)})"
        ) from None
    try:
        weights = load_file(str(w_path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{w_path}: cannot read weights ({first_line(e)})") from None
    model = build_model(task, base)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        detail = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise CheckpointError(f"{w_path}: weights do not match the config ({detail})") from None
    missing = [k for k in missing if not k.endswith(("IGNORE", "mask"))]
    if missing or unexpected:
        raise CheckpointError(
            f"{w_path}: weights do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    model.eval()
    return model, task, base
