"""Builders the tests share: tiny configs, synthetic activations, config and sweep files, and
readers of what a temporary MLflow store holds. Test modules import from here, never from
each other."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import yaml

from husai import names
from husai.config.experiment import SAEConfig, SAETrainConfig
from husai.registry.tracking import Tracker
from husai.run.sweep.ray_runtime import processes_of
from husai.sae.build import TrainStepInput

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# --- tiny configs --------------------------------------------------------------------------------
# A model small enough to train a few steps in well under a second: for tests of our logic
# (tracking, caching, reuse, determinism), not of grokking.
TINY: dict[str, Any] = {
    "name": "tiny",
    "task": {"p": 11, "train_frac": 0.5},
    "base": {"d_model": 16, "n_heads": 2, "d_mlp": 32, "max_steps": 6, "eval_every": 2},
    "activations": {"eval_frac": 0.25},
}

# TINY's base model trains 6 steps and never generalises: commands on it must say that is fine.
MEMORISED_OK = ("--allow-memorised", "yes")

# One small trial: TopK, 3 seeds, 40 steps.
TRIAL: dict[str, Any] = {
    "sae": {"architecture": "topk", "d_sae": 32, "k": 4},
    "train": {
        "steps": 40,
        "batch_size": 64,
        "lr_warmup_steps": 5,
        "lr_decay_steps": 10,
        "log_every": 5,
    },
    "trial": {"seeds": [0, 1, 2]},
}

SWEEP: dict[str, Any] = {
    "name": "tiny_sweep",
    "experiment": {
        **TINY,
        "sae": {"architecture": "topk", "d_sae": 32, "k": 4},
        "train": {
            "steps": 30,
            "batch_size": 32,
            "lr_warmup_steps": 3,
            "lr_decay_steps": 5,
            "log_every": 10,
        },
        "trial": {"seeds": [0, 1, 2]},
    },
    "search_space": {
        "sae.k": {"type": "categorical", "choices": [2, 4]},
        "consistency.lambda": {"type": "loguniform", "low": 0.01, "high": 1.0, "zero": True},
    },
    "objective": [{"metric": "stability/independent_pw_mcc_excess_surrogate_lcb", "mode": "max"}],
    "num_samples": 3,
    "asha": {"enabled": False},
    # Off in most sweep tests (each would train another trial); tests of the stage turn it on.
    "confirm": {"enabled": False},
}


def write_cfg(tmp_path: Path, extra: dict | None = None, base: dict | None = None) -> Path:
    """An experiment YAML: `base` (default: only a name) + TRIAL + `extra`, section by section."""
    data = {**(base if base is not None else {"name": "t"}), **TRIAL, **(extra or {})}
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_sweep(tmp_path: Path, **over: object) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **over}))
    return path


# --- synthetic data ------------------------------------------------------------------------------
D_IN, D_SAE, K = 16, 32, 4
FAST = SAETrainConfig(
    steps=40, batch_size=64, lr=3e-3, lr_warmup_steps=0, lr_decay_steps=0, log_every=1
)


def synthetic(n: int = 512, seed: int = 0) -> torch.Tensor:
    """Rows that are sparse combinations of 32 fixed directions (d_in 16): something to learn."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(D_SAE, D_IN, generator=g)
    codes = torch.rand(n, D_SAE, generator=g) * (torch.rand(n, D_SAE, generator=g) < 0.1)
    return codes @ dirs


def sae_cfg(arch: str) -> SAEConfig:
    """The small SAE of `synthetic`'s size, any architecture."""
    return SAEConfig(
        architecture=arch,  # type: ignore[arg-type]
        d_sae=D_SAE,
        k=K,
        l1_coefficient=0.01,
        l0_coefficient=0.01,
    )


def forward(sae: Any, x: torch.Tensor, dead: torch.Tensor | None = None) -> Any:
    """One sae-lens training forward pass at step 0."""
    step = TrainStepInput(
        sae_in=x,
        coefficients=sae.get_coefficients(),
        dead_neuron_mask=dead,
        n_training_steps=0,
        is_logging_step=False,
    )
    return sae.training_forward_pass(step)


def sparse_data(n: int, d_in: int = 32, n_feat: int = 64, seed: int = 0) -> torch.Tensor:
    """Rows that are sparse sums of fixed unit directions plus noise: something to learn."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(n_feat, d_in, generator=g), dim=1)
    on = torch.rand(n, n_feat, generator=g) < 0.06
    coef = torch.rand(n, n_feat, generator=g) * 3 * on
    return coef @ feats + 0.05 * torch.randn(n, d_in, generator=g)


def user_acts(tmp_path: Path, suffix: str = ".npy") -> Path:
    """A user's own [400, 16] activation file (.npy, .pt or .safetensors)."""
    g = torch.Generator().manual_seed(0)
    x = (
        torch.rand(400, 32, generator=g)
        * (torch.rand(400, 32, generator=g) < 0.1)
        @ torch.randn(32, 16, generator=g)
    )
    path = tmp_path / f"acts{suffix}"
    if suffix == ".npy":
        np.save(path, x.numpy())
    elif suffix == ".pt":
        torch.save(x, path)
    else:
        from safetensors.torch import save_file

        save_file({"activations": x}, str(path))
    return path


# --- reading a store -----------------------------------------------------------------------------
def store_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def all_runs(tracker: Tracker) -> list:
    exps = [e.experiment_id for e in tracker.client.search_experiments()]
    return tracker.client.search_runs(exps) if exps else []


def runs_of_kind(tracker: Tracker, kind: str, experiment: str | None = None) -> list:
    """MLflow runs tagged husai.kind = `kind` (in one experiment, or in all)."""
    if experiment is None:
        runs = all_runs(tracker)
    else:
        exp = tracker.client.get_experiment_by_name(experiment)
        runs = [] if exp is None else tracker.client.search_runs([exp.experiment_id])
    return [r for r in runs if r.data.tags.get(names.TAG_KIND) == kind]


def finished_trials(tracker: Tracker, experiment: str = "husai/tiny_sweep") -> list:
    """The FINISHED trial runs of a sweep's experiment (none while it does not exist)."""
    exp = tracker.client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return [
        r
        for r in tracker.client.search_runs([exp.experiment_id])
        if r.data.tags.get(names.TAG_KIND) == names.KIND_TRIAL and r.info.status == "FINISHED"
    ]


def sweep_temp_dir(tracker: Tracker, sweep_run_id: str) -> str:
    """The private Ray instance a sweep started (recorded on its sweep run)."""
    return tracker.client.get_run(sweep_run_id).data.tags[names.TAG_RAY_TEMP_DIR]


def ray_processes_left(temp_dir: str, wait_s: float = 15.0) -> list[str]:
    """Processes still running for the Ray instance whose temp dir is `temp_dir`: only the
    processes a test started itself, whatever other Ray jobs run on the machine."""
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for p in processes_of(temp_dir):
            with contextlib.suppress(psutil.Error):
                left.append(f"{p.pid}: {' '.join(p.cmdline())[:80]}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lm_corpus(path: Path, n_docs: int, seed: int, step: int = 7, shift: int = 3) -> Path:
    """Documents of words w0..w39 that mostly follow word i with word (step * i + shift) % 40,
    so a model has something to learn; another step or shift is a shifted distribution."""
    import json
    import random

    rng = random.Random(seed)

    def doc() -> str:
        i, out = rng.randrange(40), []
        for _ in range(rng.randint(10, 50)):
            out.append(f"w{i}")
            i = (step * i + shift) % 40 if rng.random() < 0.8 else rng.randrange(40)
        return " ".join(out)

    path.write_text("".join(json.dumps({"text": doc()}) + "\n" for _ in range(n_docs)))
    return path


def tiny_lm(
    folder: Path, n_docs: int = 80, seed: int = 0, train_steps: int = 60
) -> tuple[Path, Path]:
    """(model folder, corpus .jsonl): a 2-layer TransformerLens model built from a config with a
    word-level tokenizer of its own (nothing downloaded), trained `train_steps` Adam steps on
    the corpus, and the corpus: documents of words that mostly follow a fixed successor."""
    import json
    import warnings

    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from husai.model.lm_model import save_lm_folder

    words = [f"w{i}" for i in range(40)]
    folder.mkdir(parents=True, exist_ok=True)
    corpus = lm_corpus(folder / "corpus.jsonl", n_docs, seed)
    docs = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<unk>", *words])}
    wl = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    wl.pre_tokenizer = Whitespace()
    special = {"bos_token": "<bos>", "eos_token": "<bos>", "pad_token": "<pad>"}
    PreTrainedTokenizerFast(tokenizer_object=wl, unk_token="<unk>", **special).save_pretrained(
        str(folder / "tokenizer")
    )
    # TransformerLens reloads a tokenizer by its name_or_path: it must come from a folder.
    tok = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        n_ctx=32,
        d_vocab=len(vocab),
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer=tok)
    if train_steps:
        ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
        stream = torch.tensor([t for d in ids for t in [tok.bos_token_id, *d]])
        n = len(stream) // 16 * 16
        batches = stream[:n].reshape(-1, 16)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(train_steps):
            pick = torch.randint(len(batches), (32,), generator=gen)
            loss = model(batches[pick], return_type="loss")
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
    return save_lm_folder(model, folder / "model"), corpus


def lm_activations_cfg(model: Path, corpus: Path, **lm: object) -> dict[str, Any]:
    """The `activations` section of a tiny LM experiment."""
    return {
        "source": "transformer_lens",
        "hook": "blocks.1.hook_resid_post",
        "eval_frac": 0.2,
        "lm": {
            "model": str(model),
            "corpus": str(corpus),
            "context_size": 16,
            "token_budget": 1500,
            **lm,
        },
    }


@dataclass
class MlflowServer:
    """A real tracking server with proxied artifacts, on loopback, lean (one worker, no job
    execution: 2 processes instead of ~15), its store and artifacts in `folder`: started again
    on the same folder and port, it is the same server."""

    proc: subprocess.Popen
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, folder: Path, port: int) -> MlflowServer:
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1",
               "--backend-store-uri", "sqlite:///" + str(folder / "mlflow.db"),
               "--artifacts-destination", str(folder / "artifacts")]  # fmt: skip
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: stopped as one
        )
        server = cls(proc, folder, port)
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(server.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return server
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.stderr.read().decode() if proc.stderr is not None else ""
                raise RuntimeError("mlflow server did not start: " + err[-2000:])
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server and every process of it (asserted gone)."""
        family = [self.proc.pid] + [
            c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)
        ]
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        deadline = time.monotonic() + 15
        while any(psutil.pid_exists(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in family if psutil.pid_exists(p)]
        assert left == [], f"mlflow server processes left: {left}"
