"""Typed configs: experiments (`experiment`), YAML files and presets (`loading`), sweep files
(`sweep`). Everything a run depends on is a field here; unknown fields are refused."""
