"""Measuring SAEs, pure compute: per-SAE metrics on held-out rows (`metrics`), cross-seed
stability and its nulls (`stability`), what the consistency term did (`consistency_metrics`),
stress tests and local external evals (`evals`), and one trial: a recipe trained with N seeds
and measured (`trial`). Results are dataclasses; nothing here touches MLflow."""
