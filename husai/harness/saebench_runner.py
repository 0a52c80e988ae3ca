"""Run SAEBench's evals on one sae-lens SAE folder, the way SAEBench documents for custom SAEs
(`sae_bench.custom_saes.run_all_evals_custom_saes.run_evals`). `husai external` starts this
file with the Python of the environment where SAEBench is installed, in an empty working
folder; SAEBench writes `eval_results/<eval>/<name>_custom_sae_eval_results.json` there.
Imports nothing from husai.

    python saebench_runner.py --sae-folder F --name husai-v3 --model pythia-70m-deduped \
        --evals core,sparse_probing --device cuda --dtype float32 --batch-size 512
"""

from __future__ import annotations

import argparse
import os

import sae_bench.custom_saes.run_all_evals_custom_saes as harness
import torch
from sae_lens import SAE  # noqa: TID251 (the harness loads the folder itself)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sae-folder", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--evals", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    sae = SAE.load_from_disk(args.sae_folder, device=args.device)
    sae = sae.to(dtype=getattr(torch, args.dtype))
    sae.cfg.dtype = args.dtype  # SAEBench's custom-SAE example sets both
    sae.cfg.metadata.model_name = args.model  # the model the harness runs, by its name
    harness.run_evals(
        args.model,
        [(args.name, sae)],
        args.batch_size,
        args.dtype,
        args.device,
        eval_types=args.evals.split(","),
        api_key=os.environ.get("OPENAI_API_KEY"),  # autointerp only; skipped without one
        force_rerun=True,
        save_activations=False,
    )


if __name__ == "__main__":
    main()
