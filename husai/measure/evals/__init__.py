"""Stress tests and local evals, all on one trial's own SAEs (docs/design.md, "Evals").

- `transcoder`: transcoders (MLP in -> MLP out) vs SAEs on the MLP input, same recipe and seeds;
- `ood`: reconstruction and probe AUC on the shifted slice the SAEs never trained on;
- `probing`: SAEBench-style sparse probing on binary tasks of (a, b, c), local stand-in;
- `contrastive`: CE-Bench-style contrastive and independence scores, local stand-in.

Each returns a dataclass; `runner` (`run_evals`) runs the ones a trial's config switches on and
times them, and `results` names their numbers by MLflow key. Probing and contrastive label
pairs with `tasks` and score against the latents that learned nothing of `feature_nulls`.
Nothing here calls MLflow.
"""
