"""The registered models load with `mlflow.pyfunc`: versions registered now, and versions an
earlier layout of the package registered (their wrapper code, stored with each version, imports
`husai.base_model` and `husai.sae`)."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest

from husai import names
from husai.config.experiment import ExperimentConfig, SAEConfig
from husai.model.base_model import build_model, save_base
from husai.registry.tracking import Tracker
from husai.sae.build import build_sae, save_sae

# The wrappers as the layout before the layered packages registered them (abridged to what
# loading exercises; the imports are the point).
OLD_SAE_WRAPPER = """
import time
from pathlib import Path
import numpy as np, pandas as pd, torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel
from husai import names

class SAEPyfunc(PythonModel):
    def load_context(self, context):
        from husai.sae import load_sae
        self.sae = load_sae(Path(context.artifacts[names.ARTIFACT_SAE]))
    def predict(self, context, model_input, params=None):
        x = torch.tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return pd.DataFrame(self.sae.encode(x).numpy())

set_model(SAEPyfunc())
"""
OLD_BASE_WRAPPER = """
import time
from pathlib import Path
import pandas as pd, torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel
from husai import names

class BaseModelPyfunc(PythonModel):
    def load_context(self, context):
        from husai.base_model import load_base
        self.model, self.task, _ = load_base(Path(context.artifacts[names.ARTIFACT_BASE_WEIGHTS]))
    def predict(self, context, model_input, params=None):
        from husai.base_model import readout_logits
        a = torch.tensor(model_input["a"].to_numpy())
        b = torch.tensor(model_input["b"].to_numpy())
        tokens = torch.stack([a, b, torch.full_like(a, self.task.p)], dim=1)
        with torch.no_grad():
            return pd.Series(readout_logits(self.model, tokens).argmax(-1).numpy(), name="c")

set_model(BaseModelPyfunc())
"""
HERE = Path(__file__).resolve().parent.parent.parent / "husai" / "registry"


def _register(tracker: Tracker, code: Path, artifact: str, folder: Path, example: tuple) -> str:
    with tracker.run("husai-test", "holder", {}) as run_id:
        return tracker.register_pyfunc(
            run_id, code, {artifact: str(folder)}, example, "husai-test-model", "model", {}, ""
        )


@pytest.mark.parametrize("wrapper", ["current", "old"])
def test_sae_versions_load(tracker: Tracker, tmp_path: Path, wrapper: str) -> None:
    folder = save_sae(build_sae(SAEConfig(d_sae=8, k=2), 4, 0), tmp_path / names.ARTIFACT_SAE)
    code = HERE / "pyfunc_sae.py"
    if wrapper == "old":
        code = tmp_path / "pyfunc_sae.py"
        code.write_text(OLD_SAE_WRAPPER)
    example = (pd.DataFrame([[0.0] * 4]), pd.DataFrame([[0.0] * 8]))
    version = _register(tracker, code, names.ARTIFACT_SAE, folder, example)
    model = mlflow.pyfunc.load_model(f"models:/husai-test-model/{version}")
    latents = model.predict(pd.DataFrame(np.ones((3, 4), dtype=np.float32)))
    assert latents.shape == (3, 8)


@pytest.mark.parametrize("wrapper", ["current", "old"])
def test_base_versions_load(
    tracker: Tracker, tiny_cfg: ExperimentConfig, tmp_path: Path, wrapper: str
) -> None:
    model = build_model(tiny_cfg.task, tiny_cfg.base)
    folder = save_base(model, tiny_cfg, tmp_path / names.ARTIFACT_BASE_WEIGHTS)
    code = HERE / "pyfunc_base.py"
    if wrapper == "old":
        code = tmp_path / "pyfunc_base.py"
        code.write_text(OLD_BASE_WRAPPER)
    example = (pd.DataFrame({"a": [0], "b": [0]}), pd.Series([0], name="c"))
    version = _register(tracker, code, names.ARTIFACT_BASE_WEIGHTS, folder, example)
    loaded = mlflow.pyfunc.load_model(f"models:/husai-test-model/{version}")
    pred = loaded.predict(pd.DataFrame({"a": [1, 2], "b": [3, 4]}))
    assert pred.shape == (2,) and pred.between(0, tiny_cfg.task.p - 1).all()


def test_registering_a_finished_run_keeps_its_times(tracker: Tracker, tmp_path: Path) -> None:
    """The failure seen: a sweep registering its best trial's SAE after the trial was recorded
    moved the trial run's end to the sweep's end (the UI showed a 28 s trial as 127 s)."""
    folder = save_sae(build_sae(SAEConfig(d_sae=8, k=2), 4, 0), tmp_path / names.ARTIFACT_SAE)
    with tracker.run("husai-test", "finished", {}) as run_id:
        pass
    before = tracker.get_run(run_id)
    time.sleep(0.05)
    example = (pd.DataFrame([[0.0] * 4]), pd.DataFrame([[0.0] * 8]))
    code = HERE / "pyfunc_sae.py"
    tracker.register_pyfunc(
        run_id, code, {names.ARTIFACT_SAE: str(folder)}, example, "husai-test-model", "m", {}, ""
    )
    after = tracker.get_run(run_id)
    assert (after.status, after.end_time) == ("FINISHED", before.end_time)
