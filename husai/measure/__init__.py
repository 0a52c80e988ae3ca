"""Measuring SAEs, pure compute: per-SAE metrics on held-out rows (`metrics`), cross-seed
stability (`stability`) against its nulls (`nulls`) with intervals over seeds (`intervals`),
what the consistency term did (`consistency_metrics`), stress tests and local evals (`evals`),
loss recovered on a language model (`lm_splice`), the official harnesses' outputs read into
metrics (`official`), what trains in one stack (`stack`) and one trial: a recipe trained with N
seeds and measured (`trial`). Results are dataclasses; nothing here touches MLflow.
"""
