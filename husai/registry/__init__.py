"""The registry layer: everything HUSAI writes to or reads from MLflow. `tracking` holds every
MLflow call and hands back small frozen views (`views`); `records` and `trial_records` write
what each stage hands them; `gate` and `gate_apply` judge and promote a registered SAE;
`export` writes one out; `pyfunc_*` are the models-from-code wrappers that get registered."""
