"""Every MLflow call HUSAI makes: the store, runs, params, metrics, artifacts, registry, aliases.

Stages hand this module what to record (through `husai.registry.records`); what it reads back
comes as frozen views (`husai.registry.views`). Runs go through an explicit `MlflowClient`, so
several can be open in one process (sweep > trial > seed) without MLflow's active-run stack.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run, RunStatus, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

from husai import names
from husai.registry.provenance import (
    check_store_folder,
    creating_store,
    git_sha,
    package_versions,
    resolve_tracking_uri,
    run_tags,
    sqlite_path,
)
from husai.registry.views import RegisteredBase, RunView, VersionView

_BATCH = 1000  # MLflow's log_batch limit on metrics per call


def _run_view(run: Run) -> RunView:
    return RunView(
        run_id=run.info.run_id,
        experiment_id=str(run.info.experiment_id),
        name=run.info.run_name,
        status=run.info.status,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
    )


def _version_view(mv: ModelVersion) -> VersionView:
    return VersionView(
        name=mv.name, version=str(mv.version), run_id=str(mv.run_id), tags=dict(mv.tags)
    )


class Tracker:
    """One MLflow store (tracking + registry) and the runs HUSAI writes into it."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.uri = resolve_tracking_uri(tracking_uri)
        db = sqlite_path(self.uri)
        if db is not None:
            check_store_folder(self.uri, db)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # A new store logs its schema migrations at INFO; errors must stay one line on stderr.
        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # The fluent API (pyfunc.log_model, artifact downloads) reads the global URI.
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        # MlflowClient opens (and creates) the store: under a lock, since commands creating one
        # new SQLite store at once collide in MLflow's schema migrations.
        with creating_store(db) if db is not None else contextlib.nullcontext():
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        # `mlflow run` hands its run over in MLFLOW_RUN_ID: taken once, so no start_run adopts it.
        self.env_run_id: str | None = os.environ.pop("MLFLOW_RUN_ID", None)
        self._git_sha = git_sha()
        self._versions = package_versions()

    # --- experiments and runs -------------------------------------------------------------
    def artifact_root(self) -> Path | None:
        db = sqlite_path(self.uri)
        return None if db is None else db.parent / "artifacts"

    def experiment_id(self, name: str) -> str:
        """Experiment `name` (made if missing), tagged so the MLflow UI opens it on its runs."""
        kind = {names.MLFLOW_EXPERIMENT_KIND: names.EXPERIMENT_KIND_MODEL_DEVELOPMENT}
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            for k, v in kind.items() - exp.tags.items():  # made by an older HUSAI
                self.client.set_experiment_tag(exp.experiment_id, k, v)
            return str(exp.experiment_id)
        root = self.artifact_root()
        location = None if root is None else (root / name.replace("/", "_")).as_uri()
        try:
            return str(self.client.create_experiment(name, artifact_location=location, tags=kind))
        except MlflowException:
            # Another process created it between our lookup and create.
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def standard_tags(self, config_hash: str, kind: str, command: str) -> dict[str, str]:
        tags = run_tags(config_hash, kind, command, self._git_sha, self._versions)
        return {**tags, MLFLOW_GIT_COMMIT: self._git_sha.removesuffix("-dirty")}

    @contextmanager
    def run(
        self,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        started: float | None = None,
    ) -> Iterator[str]:
        """A run that ends FINISHED, FAILED on an error, or KILLED on Ctrl-C; never left RUNNING.
        `started`: when the work it records began (epoch seconds), for work recorded after it
        ran, so the UI's duration is the work's, not the recording's."""
        all_tags = dict(tags)
        if parent_run_id is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        start_ms = None if started is None else int(started * 1000)
        run = self.client.create_run(
            self.experiment_id(experiment), run_name=run_name, tags=all_tags, start_time=start_ms
        )
        run_id = run.info.run_id
        with self._until_done(run_id):
            self.client.log_batch(
                run_id, params=[Param(k, str(v)) for k, v in (params or {}).items()]
            )
            yield run_id

    @contextmanager
    def reopen(self, run_id: str) -> Iterator[str]:
        """Continue a run an interrupted command left KILLED or FAILED (a resumed sweep)."""
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        with self._until_done(run_id):
            yield run_id

    @contextmanager
    def _until_done(self, run_id: str) -> Iterator[None]:
        try:
            yield
        except KeyboardInterrupt:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
            raise
        except BaseException:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def latest_unfinished(self, experiment: str, kind: str) -> RunView | None:
        """The newest run of this kind that did not finish (killed, failed or left running)."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        runs = self.client.search_runs(
            [exp.experiment_id],
            f"tags.`{names.TAG_KIND}` = '{kind}' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return _run_view(runs[0]) if runs else None

    def get_run(self, run_id: str) -> RunView:
        return _run_view(self.client.get_run(run_id))

    def has_artifacts(self, run_id: str, path: str) -> bool:
        return bool(self.client.list_artifacts(run_id, path))

    def run_kind(self, run_id: str) -> str | None:
        """The run's `husai.kind` tag; None if there is no such run (or it has no kind)."""
        try:
            return self.client.get_run(run_id).data.tags.get(names.TAG_KIND)
        except MlflowException:
            return None

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, values: Mapping[str, float], step: int = 0) -> None:
        self.log_series(run_id, {k: [(step, v)] for k, v in values.items()})

    def log_series(self, run_id: str, series: Mapping[str, Sequence[tuple[int, float]]]) -> None:
        """Whole curves in a few log_batch calls (one call per value is ~30x slower)."""
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, int(step))
            for key, points in series.items()
            for step, value in points
        ]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + _BATCH])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))

    def link_env_run(self, tags: Mapping[str, str]) -> None:
        """Under `mlflow run`, point its run at the runs this command made or reused."""
        if self.env_run_id is not None:
            self.set_tags(self.env_run_id, tags)

    def log_dataset_input(self, run_id: str, name: str, digest: str, source: str) -> None:
        """The run's Dataset column: rows it trained on, by name, digest and where they live."""
        ds = DatasetEntity(name, digest[:32], names.DATASET_SOURCE_TYPE, source)
        tag = InputTag(MLFLOW_DATASET_CONTEXT, names.DATASET_CONTEXT_TRAIN)
        self.client.log_inputs(run_id, [DatasetInput(ds, [tag])])

    def child_runs(self, parent_run_id: str) -> list[RunView]:
        return [_run_view(r) for r in self._children(parent_run_id)]

    def _children(self, parent_run_id: str) -> list[Run]:
        run = self.client.get_run(parent_run_id)
        return list(
            self.client.search_runs(
                [run.info.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'"
            )
        )

    def mark_killed(self, run_id: str) -> None:
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))

    def mark_failed(self, run_id: str) -> None:
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))

    def end_running_children(self, parent_run_id: str) -> int:
        """Mark children a killed worker left RUNNING as KILLED; how many there were."""
        stale = [r for r in self._children(parent_run_id) if r.info.status == "RUNNING"]
        for r in stale:
            self.client.set_terminated(r.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        return len(stale)

    def get_run_params(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.params)

    def get_run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    def newest_run(
        self, experiment: str, params: Mapping[str, str], tags: Mapping[str, str] | None = None
    ) -> str | None:
        """The newest finished run of `experiment` with these params (and tags), if any."""
        runs = self.find_runs(experiment, params, tags)
        return runs[0] if runs else None

    def find_runs(
        self, experiment: str, params: Mapping[str, str], tags: Mapping[str, str] | None = None
    ) -> list[str]:
        """Finished runs of `experiment` whose params (and tags) equal these, newest first."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        clauses = [f"params.`{k}` = '{v}'" for k, v in params.items()]
        clauses += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
        clauses.append("attributes.status = 'FINISHED'")
        runs = self.client.search_runs(
            [exp.experiment_id], " and ".join(clauses), order_by=["attributes.start_time DESC"]
        )
        return [r.info.run_id for r in runs]

    # --- registry ----------------------------------------------------------------------------
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
        status = self.client.get_run(run_id).info.status
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name=artifact_name,
                python_model=str(code),
                artifacts=dict(artifacts),
                signature=infer_signature(*example),
                pip_requirements=[f"{k}=={v}" for k, v in self._versions.items() if k != "husai"],
            )
        # Leaving the fluent block ended the run FINISHED: put back the status it had (RUNNING
        # inside `run()`, which alone decides how a run ends; FINISHED for a recorded trial).
        self.client.update_run(run_id, status=status)
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

    def log_texts(self, run_id: str, files: Mapping[str, str], artifact_path: str) -> None:
        """Small text artifacts (reports), written to a temporary folder and logged."""
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                (Path(tmp) / name).write_text(text)
            self.client.log_artifacts(run_id, tmp, artifact_path)

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
