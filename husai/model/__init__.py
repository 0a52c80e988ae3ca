"""The model side, pure compute: the modular-addition task (`task`), the base transformer
(`base_model`: build, train, save, load) and its activations (`activations`: extract, split,
cache entries, a user's own file), rows that stay on disk (`rows`), a language model
(`lm_model`) and its activations over a local corpus (`lm_source`), a set's Gaussian twin
(`gaussian_twin`, what the surrogate null trains on) and synthetic sets with known truth
(`synthetic`). Nothing here touches MLflow.
"""
