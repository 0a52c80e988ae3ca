"""MLflow pyfunc wrapper of a HUSAI base model, logged as models-from-code (nothing pickled).

`husai.registry.records` logs this file with the safetensors weights as the artifact "weights";
a user then predicts c = (a + b) mod p from a DataFrame with columns a and b:

    model = mlflow.pyfunc.load_model("models:/husai-base/1")
    model.predict(pandas.DataFrame({"a": [3, 5], "b": [4, 9]}))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from husai import names
from husai.model.base_model import load_base, readout_logits


class BaseModelPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        self.model, self.task, _ = load_base(Path(context.artifacts[names.ARTIFACT_BASE_WEIGHTS]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.Series:
        a = torch.tensor(model_input["a"].to_numpy(), dtype=torch.long)
        b = torch.tensor(model_input["b"].to_numpy(), dtype=torch.long)
        p = self.task.p
        if ((a < 0) | (a >= p) | (b < 0) | (b >= p)).any():
            raise ValueError(f"operands must lie in [0, {p})")
        tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
        with torch.no_grad():
            pred = readout_logits(self.model, tokens).argmax(-1)
        return pd.Series(pred.numpy(), name="c")


set_model(BaseModelPyfunc())
