"""Running experiments: the stages that find a thing in MLflow or compute and record it
(`stages`, `trial_stages`), Ray Tune sweeps (`sweep`, the driver; `sweep_trial`, one trial in
a worker; `sweep_bundles`, grid points trained as one stack; with `ray_runtime` and the
progress lines of `sweep_progress`), and the end-to-end `pipeline`."""
