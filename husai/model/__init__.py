"""The model side, pure compute: the modular-addition task (`task`), the base transformer
(`base_model`: build, train, save, load) and its activations (`activations`: extract, split,
cache entries, a user's own file). Nothing here touches MLflow."""
