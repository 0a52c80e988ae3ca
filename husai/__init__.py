"""HUSAI: are sparse-autoencoder features reproducible across random seeds?

An MLflow-tracked experiment registry: a modular-addition transformer, SAEs trained on its
activations with many seeds, cross-seed stability against nulls that learned nothing, Ray
Tune sweeps and a release gate on the MLflow Model Registry. See README.md for how to run it.
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
metric_version = 4
