"""Typed sweep files (`sweeps/*.yaml`): the file itself (`spec`: `SweepConfig`, `load_sweep`,
a Tune trial's params), its parts (`parts`: search dimensions, objectives, resources, ASHA, the
smoke run, the confirmation stage, which fields a sweep may vary) and the confirmation's
recipe (`confirm`). Part of the config layer."""
