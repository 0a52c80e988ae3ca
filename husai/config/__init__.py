"""Typed configs: experiments (`experiment`, with the SAE recipe and its training in `sae` and
a language model's source in `lm`), YAML files and presets (`loading`; the shipped presets in
`presets`), sweep files (the `sweep` subpackage), all on one strict base (`strict`).
Everything a run depends on is a field here; unknown fields are refused.
"""
