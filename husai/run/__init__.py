"""Running experiments: the stages that find a thing in MLflow or compute and record it
(`stages`, `trial_stages`), Ray Tune sweeps (`sweep`, with `ray_runtime` and the progress
lines of `sweep_progress`), and the end-to-end `pipeline`."""
