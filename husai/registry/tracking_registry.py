"""Every MLflow Model Registry call HUSAI makes: pyfunc versions, version tags, aliases and the
base-model lookups. `RegistryCalls` is the registry half of `husai.registry.tracking.Tracker`
(its base class), kept apart so each half stays one screenful of concerns.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from husai import names
from husai.registry.views import RegisteredBase, VersionView


def _version_view(mv: ModelVersion) -> VersionView:
    return VersionView(
        name=mv.name, version=str(mv.version), run_id=str(mv.run_id), tags=dict(mv.tags)
    )


class RegistryCalls:
    """The Model Registry half of `Tracker` (its base class): versions, tags, aliases."""

    client: MlflowClient
    _versions: dict[str, str]  # package versions, pinned in a logged model's requirements

    def register_pyfunc(
        self,
        run_id: str,
        code: Path,
        artifacts: Mapping[str, str],
        example: tuple[pd.DataFrame, Any],
        model_name: str,
        artifact_name: str,
        tags: Mapping[str, str],
        description: str,
        alias: str | None = None,
    ) -> str:
        """Log a models-from-code pyfunc on `run_id` and register it as a new version (a bare
        safetensors folder cannot be registered; a pyfunc can, loads with
        mlflow.pyfunc.load_model("models:/<name>/<version>") and pickles nothing)."""
        before = self.client.get_run(run_id).info
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name=artifact_name,
                python_model=str(code),
                artifacts=dict(artifacts),
                signature=infer_signature(*example),
                pip_requirements=[f"{k}=={v}" for k, v in self._versions.items() if k != "husai"],
            )
        # Leaving the fluent block ended the run FINISHED, now: put back the status it had
        # (RUNNING inside `run()`, which alone decides how a run ends) and, for a run that had
        # ended (a trial registered after it was recorded), its end time, so that the UI's
        # duration stays the work's.
        if before.status == "RUNNING":
            self.client.update_run(run_id, status=before.status)
        else:
            self.client.set_terminated(run_id, before.status, end_time=before.end_time)
        self._ensure_registered_model(model_name)
        mv = self.client.create_model_version(
            model_name,
            source=info.model_uri,
            run_id=run_id,
            tags=dict(tags),
            description=description,
            # A tracking server refuses a `models:/m-...` source without the logged model's id
            # (a local SQLite store does not check).
            model_id=info.model_id,
        )
        if alias is not None:
            self.client.set_registered_model_alias(model_name, alias, str(mv.version))
        return str(mv.version)

    def find_model_version(self, model_name: str, tags: Mapping[str, str]) -> str | None:
        """The newest version of `model_name` carrying these tags, if any."""
        clauses = [f"name = '{model_name}'"] + [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        versions = self.client.search_model_versions(" and ".join(clauses))
        return str(max(int(v.version) for v in versions)) if versions else None

    def download_model_version(self, model_name: str, version: str, dst: Path) -> Path:
        """The logged model folder behind `model_name` version `version` (MlflowException if
        there is no such version)."""
        mv = self.client.get_model_version(model_name, version)
        dst.mkdir(parents=True, exist_ok=True)
        uri = f"models:/{model_name}/{mv.version}"
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))

    def model_version(
        self, model_name: str, version: str | None, alias: str | None
    ) -> VersionView | None:
        """The version by number or alias; None if there is no such version or alias."""
        try:
            if alias is not None:
                return _version_view(self.client.get_model_version_by_alias(model_name, alias))
            return _version_view(self.client.get_model_version(model_name, str(version)))
        except MlflowException:
            return None

    def set_version_tags(self, model_name: str, version: str, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(model_name, version, k, v)

    def delete_version_tag(self, model_name: str, version: str, key: str) -> None:
        with contextlib.suppress(MlflowException):
            self.client.delete_model_version_tag(model_name, version, key)

    def set_alias(self, model_name: str, alias: str, version: str) -> str | None:
        """Point `alias` at `version`; what it names read back (concurrent writes: last wins)."""
        self.client.set_registered_model_alias(model_name, alias, version)
        now = self.model_version(model_name, None, alias)
        return None if now is None else now.version

    def _ensure_registered_model(self, name: str) -> None:
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)

    def find_base_version(self, config_hash: str) -> RegisteredBase | None:
        """The newest husai-base version tagged with this config hash, if any."""
        return self._newest_base(f"tags.`{names.TAG_CONFIG_HASH}` = '{config_hash}'")

    def find_base_by_run(self, run_id: str) -> RegisteredBase | None:
        """The husai-base version registered from this training run, if any."""
        return self._newest_base(f"run_id = '{run_id}'")

    def _newest_base(self, clause: str) -> RegisteredBase | None:
        versions = self.client.search_model_versions(
            f"name = '{names.BASE_MODEL_NAME}' and {clause}"
        )
        if not versions:
            return None
        mv = max(versions, key=lambda v: int(v.version))
        return RegisteredBase(
            version=str(mv.version),
            run_id=str(mv.run_id),
            config_hash=mv.tags.get(names.TAG_CONFIG_HASH, ""),
            test_acc=float(mv.tags.get(names.BASE_TEST_ACC, "nan")),
            generalised=mv.tags.get(names.TAG_GENERALISED) == "true",
        )
