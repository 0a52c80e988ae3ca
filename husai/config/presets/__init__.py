"""Shipped experiment presets (YAML), loaded by `husai.config.loading.load_preset`."""
