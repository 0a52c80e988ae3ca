"""The registry layer: everything HUSAI writes to or reads from MLflow. `tracking` holds every
MLflow call (its Model Registry half in `tracking_registry`) and hands back small frozen views
(`views`); `provenance` says which store a command uses and what every run is tagged with;
`claims` keeps one writer per piece of work; `records`, `trial_records`, `sweep_records` and
`external_records` write what each stage hands them, and `handles` is what a stage hands on;
`gate` and `gate_apply` judge and promote a registered SAE; `export` writes one out;
`pyfunc_base` and `pyfunc_sae` are the models-from-code wrappers that get registered.
"""
