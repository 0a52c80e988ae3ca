"""SAEs, pure compute: construction from sae-lens training classes (`build`), the consistency
penalty (`consistency`), seeded training seed by seed (`train`) or all seeds at once (the
`batched` subpackage), what training returns (`types`) and where it runs (`devices`).

`load_sae` is also importable from here because `husai-sae` versions registered before the
layered layout (models-from-code wrappers, which MLflow stores with the version) import
`husai.sae.load_sae` when they load.
"""

from husai.sae.build import load_sae

__all__ = ["load_sae"]
