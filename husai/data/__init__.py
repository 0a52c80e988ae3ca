"""Task data: the modular-addition dataset the base model learns."""

from husai.data.modular import ModularData, make_modular_data, split_indices

__all__ = ["ModularData", "make_modular_data", "split_indices"]
