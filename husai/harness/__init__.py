"""Runners for the official external benchmarks, executed by `husai external` with the
harness's own Python (its environment, not HUSAI's: they import nothing from husai):
`saebench_runner` (SAEBench) and `cebench_runner` (CE-Bench).
"""
