"""MLflow pyfunc wrapper of a HUSAI SAE (models-from-code; the weights stay in sae-lens format).

The registered `husai-sae` version holds the sae-lens folder as the artifact "sae":

    model = mlflow.pyfunc.load_model("models:/husai-sae@candidate")
    latents = model.predict(acts_dataframe)          # [n, d_sae] latent activations
    folder = mlflow.artifacts.download_artifacts("models:/husai-sae@candidate")
    sae = sae_lens.SAE.load_from_disk(f"{folder}/artifacts/sae")   # the SAE itself
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from husai import names
from husai.sae.build import load_sae


class SAEPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        self.sae = load_sae(Path(context.artifacts[names.ARTIFACT_SAE]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        x = torch.tensor(np.asarray(model_input, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.sae.cfg.d_in:
            raise ValueError(f"expected [n, {self.sae.cfg.d_in}] activations, got {list(x.shape)}")
        with torch.no_grad():
            latents = self.sae.encode(x)
        return pd.DataFrame(latents.numpy())


set_model(SAEPyfunc())
