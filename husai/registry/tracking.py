"""Every MLflow tracking call HUSAI makes: the store, runs, params, metrics, artifacts, inputs.

Stages hand this module what to record (through `husai.registry.records`); what it reads back
comes as frozen views (`husai.registry.views`). Runs go through an explicit `MlflowClient`, so
several can be open in one process (sweep > trial > seed) without MLflow's active-run stack.
The Model Registry calls are its base class, `husai.registry.tracking_registry.RegistryCalls`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

from husai import names
from husai.core.errors import TrackingLost
from husai.registry.provenance import (
    check_server,
    check_store_folder,
    check_tracking_uri,
    creating_store,
    git_sha,
    package_versions,
    resolve_tracking_uri,
    run_tags,
    sqlite_path,
)
from husai.registry.tracking_registry import RegistryCalls
from husai.registry.views import RunView

_BATCH = 1000  # MLflow's log_batch limit on metrics (and on entities in all) per call
_PARAMS = 100  # its limit on params per call


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


class Tracker(RegistryCalls):
    """One MLflow store (tracking + registry) and the runs HUSAI writes into it."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.uri = resolve_tracking_uri(tracking_uri)
        check_tracking_uri(self.uri)
        db = sqlite_path(self.uri)
        if db is not None:
            check_store_folder(self.uri, db)
        check_server(self.uri)
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
        self._versions = dict(package_versions())
        # A sweep's trial process makes ~4 runs per trial in one experiment: look it up once.
        self._experiments: dict[str, str] = {}

    # --- experiments and runs -------------------------------------------------------------
    def artifact_root(self) -> Path | None:
        """Where a SQLite store's experiments keep their artifacts: `mlruns/artifacts` beside
        the database (as MLflow's own default keeps them under `mlruns/`), or `artifacts` beside
        one that already lives in a folder named mlruns."""
        db = sqlite_path(self.uri)
        if db is None:
            return None
        return (
            db.parent / "artifacts"
            if db.parent.name == "mlruns"
            else db.parent / "mlruns" / "artifacts"
        )

    def experiment_id(self, name: str) -> str:
        """Experiment `name` (made if missing), tagged so the MLflow UI opens it on its runs."""
        if name not in self._experiments:
            self._experiments[name] = self._experiment_id(name)
        return self._experiments[name]

    def find_experiment_id(self, name: str) -> str | None:
        """Experiment `name`'s id if it exists (nothing is made)."""
        exp = self.client.get_experiment_by_name(name)
        return None if exp is None else str(exp.experiment_id)

    def _experiment_id(self, name: str) -> str:
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
        series: Mapping[str, Sequence[tuple[int, float]]] | None = None,
        final: str = "FINISHED",
    ) -> Iterator[str]:
        """A run that ends FINISHED, FAILED on an error, or KILLED on Ctrl-C; never left RUNNING.
        `started`: when the work it records began (epoch seconds), for work recorded after it
        ran, so the UI's duration is the work's, not the recording's. `series`: metrics known
        before the run is made, written with its params (one call instead of several).
        `final`: the status a run that did not raise ends with (a record of a stopped or
        failed trial ends KILLED or FAILED, never FINISHED first, where a search would
        find it)."""
        all_tags = dict(tags)
        if parent_run_id is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        start_ms = None if started is None else int(started * 1000)
        run = self.client.create_run(
            self.experiment_id(experiment), run_name=run_name, tags=all_tags, start_time=start_ms
        )
        run_id = run.info.run_id
        with self._until_done(run_id, final):
            self._log_batch(run_id, [Param(k, str(v)) for k, v in (params or {}).items()], series)
            yield run_id

    @contextmanager
    def reopen(self, run_id: str) -> Iterator[str]:
        """Continue a run an interrupted command left KILLED or FAILED (a resumed sweep)."""
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        with self._until_done(run_id):
            yield run_id

    @contextmanager
    def _until_done(self, run_id: str, final: str = "FINISHED") -> Iterator[None]:
        try:
            yield
        except TrackingLost:
            raise  # the run stays RUNNING: a resumed command finds it unfinished
        except KeyboardInterrupt:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
            raise
        except BaseException:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        self.client.set_terminated(run_id, final)

    def latest_unfinished(self, experiment: str, kind: str) -> RunView | None:
        """The newest run of this kind that did not finish (killed, failed or left running)."""
        runs = self._search(
            experiment, {names.TAG_KIND: kind}, "attributes.status != 'FINISHED'", newest_first=True
        )
        return _run_view(runs[0]) if runs else None

    def _search(
        self,
        experiment: str,
        tags: Mapping[str, str],
        status: str,
        newest_first: bool,
        params: Mapping[str, str] | None = None,
    ) -> list[Run]:
        """Runs of `experiment` with these tags (and params) whose status clause holds, by
        start time; [] when the experiment does not exist yet."""
        exp_id = self._experiments.get(experiment)
        if exp_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                return []
            exp_id = str(exp.experiment_id)
        clauses = [f"params.`{k}` = '{v}'" for k, v in (params or {}).items()]
        clauses += [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        order = "DESC" if newest_first else "ASC"
        return list(
            self.client.search_runs(
                [exp_id],
                " and ".join([*clauses, status]),
                order_by=[f"attributes.start_time {order}"],
            )
        )

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
        self._log_batch(run_id, [], series)

    def _log_batch(
        self,
        run_id: str,
        params: list[Param],
        series: Mapping[str, Sequence[tuple[int, float]]] | None,
    ) -> None:
        """Params and metrics in as few log_batch calls as MLflow's limits allow."""
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, int(step))
            for key, points in (series or {}).items()
            for step, value in points
        ]
        if not params and not metrics:
            return
        chunks = [params[i : i + _PARAMS] for i in range(0, len(params), _PARAMS)] or [[]]
        for chunk in chunks[:-1]:
            self.client.log_batch(run_id, params=chunk)
        head = _BATCH - len(chunks[-1])
        self.client.log_batch(run_id, metrics=metrics[:head], params=chunks[-1])
        for i in range(head, len(metrics), _BATCH):
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

    def mark_failed(self, run_id: str) -> None:
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))

    def end_running_children(self, parent_run_id: str, status: str = "KILLED") -> int:
        """End the children a killed worker left RUNNING (KILLED, or `status`); how many."""
        stale = [r for r in self._children(parent_run_id) if r.info.status == "RUNNING"]
        for r in stale:
            self.client.set_terminated(r.info.run_id, status)
        return len(stale)

    def open_claim_run(self, name: str, tags: Mapping[str, str]) -> str:
        """A run in the claims experiment, left RUNNING: a claim other processes can see."""
        exp = self.experiment_id(names.EXPERIMENT_CLAIMS)
        return str(self.client.create_run(exp, run_name=name, tags=dict(tags)).info.run_id)

    def running_runs(self, experiment: str, tags: Mapping[str, str]) -> list[RunView]:
        """RUNNING runs of `experiment` with these tags, oldest first."""
        runs = self._search(experiment, tags, "attributes.status = 'RUNNING'", newest_first=False)
        return [_run_view(r) for r in runs]

    def delete_run(self, run_id: str) -> None:
        """Hide a run from searches and the UI (MLflow keeps it until garbage collection)."""
        with contextlib.suppress(MlflowException):  # deleted already, by a rival that saw it stale
            self.client.delete_run(run_id)

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
        finished = "attributes.status = 'FINISHED'"
        runs = self._search(experiment, tags or {}, finished, newest_first=True, params=params)
        return [r.info.run_id for r in runs]

    def log_texts(self, run_id: str, files: Mapping[str, str], artifact_path: str) -> None:
        """Small text artifacts (reports), written to a temporary folder and logged."""
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                (Path(tmp) / name).write_text(text)
            self.client.log_artifacts(run_id, tmp, artifact_path)
