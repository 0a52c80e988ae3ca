"""HUSAI: are sparse-autoencoder features reproducible across random seeds?

An MLflow-tracked experiment registry: a modular-addition transformer, SAEs trained on its
activations with many seeds, cross-seed stability against nulls that learned nothing, Ray
Tune sweeps and a release gate on the MLflow Model Registry. See README.md for how to run it.

The packages, from the bottom layer up (docs/design.md, "1. The layers"): `core`, `names`, `config`,
`model`, `sae`, `measure`, `registry`, `report`, `console`, `run`; the command line is `cli`
(its options in `cli_args`); `harness` holds the official benchmarks' runners, run in their
own Python. `base_model` is a compatibility shim only: `husai-base` versions registered before
the layered layout import their code from it.
"""

__version__ = "0.1.0"

# Bumped whenever the definition of a metric or gate changes, so that runs measured under
# different definitions are never compared silently (tagged on every run).
# 2: SAEs never train on the OOD slice (activations.ood_frac); evals added.
# 3: stability against nulls (isotropic, covariance, random base model) with `_excess`; alive-only
#    stability; jackknife-t intervals over seeds replace percentile bootstraps everywhere.
# 4: lambda in loss units (lambda * s * penalty, s the train rows' total variance);
#    independent pw_mcc and its excess, consistency/independent_gain; sweeps confirm their best
#    recipe on fresh seeds and the gate judges the confirmation.
# 5: every stress test and local external eval against its own null: contrastive on held-out
#    rows with single-attribute pairs and feature nulls (its delta absent at lambda 0),
#    OOD as an FVU ratio with an in-distribution subset null, the transcoder stress against
#    space-matched covariance nulls, probing with k chosen by CV on SAE-train rows, Fourier
#    tasks and feature nulls; gate checks can say `when: lambda > 0`.
# 6: the surrogate null (the recipe trained on a Gaussian twin of its rows) and an excess over
#    every null (no "strongest"), alive-only excess against the null's alive latents; gate
#    policies name the nulls they gate on; independence at lambda > 0 scored against the
#    lambda = 0 recipe's seeds with two-way intervals (the control reference is gone); null
#    draws derive from the trial's seeds; the transcoder stress against surrogate nulls.
# 7: the local stand-in evals' keys renamed external/* -> local/* (the official harnesses keep
#    saebench/* and cebench/*); a policy naming an old key is refused with the new one.
metric_version = 7
