"""Run CE-Bench's contrastive evaluation on one sae-lens SAE folder. CE-Bench is a checkout,
not a package: its `ce_bench/CE_Bench.py` scores one SAE with `run_eval_once(dataset, device,
release, sae, config)`, which takes an SAE object where its command line would take a sae-lens
release id, and writes `interpretability_eval/<release>/custom_sae/results.json` in the
working folder. `husai external` starts this file with the Python of the environment where
CE-Bench runs, in an empty working folder. Imports nothing from husai.

    python cebench_runner.py --harness-path ~/CE-Bench --dataset ~/data/contrastive-stories-v3 \
        --sae-folder F --name husai-v3 --model pythia-70m-deduped --device cuda
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import datasets
from sae_lens import SAE  # noqa: TID251 (the harness loads the folder itself)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--harness-path", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--sae-folder", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    # A checkout, not a package: its module is found by path.
    sys.path.insert(0, str(Path(args.harness_path) / "ce_bench"))
    harness = importlib.import_module("CE_Bench")

    # The contrastive stories: a `save_to_disk` folder, else a Hub name read from the cache.
    where = Path(args.dataset).expanduser()
    if where.exists():
        data = datasets.load_from_disk(str(where))
    else:
        data = datasets.load_dataset(args.dataset, split="train")
    config = harness.AutoInterpEvalConfig(model_name=args.model)
    config.llm_batch_size = args.batch_size
    config.llm_dtype = args.dtype
    sae = SAE.load_from_disk(args.sae_folder, device=args.device)
    meta = sae.cfg.metadata
    meta.model_name = args.model  # the model the harness runs, by the name it loads
    # CE-Bench reads cfg.hook_name (sae-lens 5's place); sae-lens 6 keeps it in metadata.
    sae.cfg.hook_name, sae.cfg.model_name = meta.hook_name, args.model
    harness.run_eval_once(data, args.device, args.name, sae, config)


if __name__ == "__main__":
    main()
