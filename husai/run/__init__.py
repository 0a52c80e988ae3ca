"""Running experiments: the stages that find a thing in MLflow or compute and record it
(`stages`; a trial's, `trial_stages`; a language model's sets, `lm_stages`; a user's own
activations, `user_sets`), Ray Tune sweeps (the `sweep` subpackage), the end-to-end
`pipeline`, and the official harnesses run on a registered SAE (`external`)."""
