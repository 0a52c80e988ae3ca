"""Shipped experiment presets (YAML), loaded by `husai.config.load_preset`."""
