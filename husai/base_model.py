"""Where `husai-base` versions registered before the layered layout look for their code.

Their models-from-code wrapper, which MLflow stores with each version, imports `load_base` and
`readout_logits` from `husai.base_model` when it loads; both live in `husai.model.base_model`
now. New versions import them from there directly. Nothing else uses this module.
"""

from husai.model.base_model import load_base, readout_logits

__all__ = ["load_base", "readout_logits"]
