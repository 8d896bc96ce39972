"""MLflow tracking: one run per command, with config, metrics, artifacts and lineage.

The default tracking URI is a SQLite file in the working directory (``./mlflow.db``) with
artifacts in ``./mlartifacts``: nothing to start. ``MLFLOW_TRACKING_URI`` points at a server.
Only the driver process talks to MLflow through :func:`tracked_run`; worker processes (Train
rank 0, Tune trials) log with :func:`start_batched_run` / :func:`log_metric_rows` /
:func:`end_batched_run`: one client per process and ``log_batch`` calls, not one call per
metric.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from raymmi.config import TrackingConfig, flatten

_PARAM_LIMIT = 6000  # MLflow's maximum length of a param value
# MLflow 3's UI opens an experiment without this tag on its GenAI "Traces" page; with the
# "custom model development" kind it opens on the runs table, where raymmi's runs are.
_KIND = "mlflow.experimentKind"
EXPERIMENT_TAGS = {_KIND: "custom_model_development"}


def tracking_uri(config: TrackingConfig | None = None) -> str:
    """The tracking URI in force: config, then ``MLFLOW_TRACKING_URI``, then ``./mlflow.db``."""
    if config is not None and config.uri:
        return config.uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    """Absolute artifact folder beside a local SQLite store, so runs work from any cwd."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


class Run:
    """A live MLflow run (or a no-op stand-in when tracking is disabled)."""

    def __init__(self, run_id: str | None, mlflow_module: Any | None) -> None:
        self.run_id = run_id
        self._mlflow = mlflow_module

    @property
    def enabled(self) -> bool:
        """Whether calls reach MLflow."""
        return self._mlflow is not None

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        """Log numeric metrics (non-numbers are skipped)."""
        if self._mlflow is None:
            return
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self._mlflow.log_metrics(clean, step=step)

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        """Store a dictionary as a JSON/YAML artifact called ``name``."""
        if self._mlflow is not None:
            self._mlflow.log_dict(dict(data), name)

    def log_table(self, frame: pd.DataFrame, name: str) -> None:
        """Store a table as a CSV artifact ``name`` (viewable in the MLflow UI)."""
        if self._mlflow is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(path, index=False)
            folder = str(Path(name).parent)
            self._mlflow.log_artifact(str(path), None if folder == "." else folder)

    def log_figure(self, figure: Any, name: str) -> None:
        """Store a matplotlib figure as an image artifact."""
        if self._mlflow is not None:
            self._mlflow.log_figure(figure, name)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Store a local file as an artifact."""
        if self._mlflow is not None:
            self._mlflow.log_artifact(str(path), folder)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified)."""
        if self._mlflow is not None:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_shard_set(self, uri: str, manifest: Mapping[str, Any], *, context: str) -> None:
        """Record a shard set as lineage: an MLflow dataset input (``input``/``output``).

        The manifest is stored as an artifact under ``lineage/<context>/``; the dataset digest
        is the manifest's content hash, so the UI links runs that share a shard-set version.
        """
        if self._mlflow is None:
            return
        import hashlib

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        text = json.dumps(manifest, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        name = Path(uri.rstrip("/")).name or uri
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(uri)
        dataset = MetaDataset(source, name=name, digest=digest)  # type: ignore[abstract]
        self._mlflow.log_input(dataset, context=context)
        summary = {k: v for k, v in manifest.items() if k not in ("features", "modalities")}
        self.log_dict({"uri": uri, **summary}, f"lineage/{context}/{name}.json")


@contextlib.contextmanager
def tracked_run(
    command: str,
    *,
    config: Mapping[str, Any],
    tracking: TrackingConfig | None = None,
    run_name: str | None = None,
    nested: bool = False,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[Run]:
    """Open one MLflow run for ``command``, logging its full config as params.

    Parameters
    ----------
    command
        Stage name, e.g. ``"ingest plates"``; stored as the ``raymmi.command`` tag.
    config
        The stage's configuration as a (nested) dictionary.
    tracking
        Tracking settings; ``enabled=False`` yields a no-op :class:`Run`.

    Yields
    ------
    Run
        The live run; its ``run_id`` belongs in output manifests.
    """
    tracking = tracking or TrackingConfig()
    if not tracking.enabled:
        yield Run(None, None)
        return
    import mlflow

    uri = tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        experiment_id = mlflow.create_experiment(
            tracking.experiment, artifact_location=_artifact_root(uri), tags=EXPERIMENT_TAGS
        )
    else:
        experiment_id = experiment.experiment_id
        if experiment.tags.get(_KIND) is None:
            mlflow.MlflowClient(uri).set_experiment_tag(
                experiment_id, _KIND, EXPERIMENT_TAGS[_KIND]
            )
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name or run_label(command, config),
        nested=nested,
    ) as active:
        run = Run(active.info.run_id, mlflow)
        params = {k: _param(v) for k, v in flatten(dict(config)).items()}
        for chunk in _chunks(list(params.items()), 100):
            mlflow.log_params(dict(chunk))
        run.log_dict(dict(config), "config.yaml")
        run.set_tags({"raymmi.command": command, **(tags or {})})
        yield run


@contextlib.contextmanager
def resumed_run(tracking: TrackingConfig, run_id: str) -> Iterator[Run]:
    """Re-open the existing run ``run_id`` (a resumed search's parent run)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(tracking))
    with mlflow.start_run(run_id=run_id):
        yield Run(run_id, mlflow)


def child_runs(uri: str, parent_run_id: str, *, status: str | None = None) -> list[Any]:
    """Every nested run of a parent (all result pages), only those in ``status`` if given."""
    mlflow_client = client(uri)
    experiment = mlflow_client.get_run(parent_run_id).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    if status is not None:
        query += f" and status = '{status}'"
    runs: list[Any] = []
    token = None
    while True:
        page = mlflow_client.search_runs([experiment], filter_string=query, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def close_orphaned_children(uri: str, parent_run_id: str) -> int:
    """Mark nested runs an interrupted search left RUNNING as KILLED; return how many."""
    runs = child_runs(uri, parent_run_id, status="RUNNING")
    for run in runs:
        client(uri).set_terminated(run.info.run_id, status="KILLED")
    return len(runs)


def mark_stopped(uri: str, parent_run_id: str, stopped: set[str]) -> None:
    """Nested runs of trials ASHA stopped: FINISHED, tagged ``raymmi.stopped_early``.

    A stopped trial's process is ended mid-training, so its run is left RUNNING (or closed
    by MLflow's exit hook) and says nothing of what happened. Early stopping is the search
    working as meant, so such a run ends FINISHED (MLflow's red KILLED reads as a crash); the
    tags say it was stopped and after how many epochs (``raymmi.stopped_at_epoch``). Other
    runs still RUNNING are KILLED.
    """
    mlflow_client = client(uri)
    for run in child_runs(uri, parent_run_id):
        trial_id = run.data.tags.get("raymmi.trial_id")
        if trial_id in stopped:
            mlflow_client.set_tag(run.info.run_id, "raymmi.stopped_early", "true")
            last = run.data.metrics.get("epoch")
            if last is not None:
                mlflow_client.set_tag(run.info.run_id, "raymmi.stopped_at_epoch", int(last) + 1)
            mlflow_client.set_terminated(run.info.run_id, status="FINISHED")
        elif run.info.status == "RUNNING":
            mlflow_client.set_terminated(run.info.run_id, status="KILLED")


def set_parent(uri: str, run_id: str, parent_run_id: str) -> None:
    """Nest the existing run ``run_id`` under ``parent_run_id`` (MLflow's parent tag)."""
    client(uri).set_tag(run_id, "mlflow.parentRunId", parent_run_id)


def runs_page(
    tracking: TrackingConfig | None = None, *, host: str = "http://127.0.0.1:5000"
) -> str:
    """The MLflow UI's address of the experiment's runs table (not its GenAI Overview).

    MLflow 3's UI opens an experiment in its GenAI mode unless the address asks for the
    model-training workflow (``workflowType=machine_learning``).
    """
    import mlflow

    tracking = tracking or TrackingConfig()
    experiment = mlflow.MlflowClient(tracking_uri(tracking)).get_experiment_by_name(
        tracking.experiment
    )
    where = f"experiments/{experiment.experiment_id}/runs" if experiment else "experiments"
    return f"{host}/#/{where}?workflowType=machine_learning"


def run_label(command: str, config: Mapping[str, Any]) -> str:
    """A run name that says what the run did: ``normalize jump_plates standardize/negcon``.

    The command, the name of its input (``source``/``sources``/``data``, else its ``out``) and
    the settings that tell runs of one command apart (method, reference, model, task).
    """
    sources = config.get("sources") or ()
    first = config.get("source") or config.get("data") or (sources[0] if sources else None)
    subject = _stem(first) if first else _stem(config.get("out") or "")
    if first and len(sources) > 1:
        subject += f" +{len(sources) - 1}"
    detail = "/".join(
        str(config[k])
        for k in ("task", "model_name", "method", "reference")
        if isinstance(config.get(k), str)
    )
    return " ".join(part for part in (command, subject, detail) if part)


def _stem(path: Any) -> str:
    return Path(str(path).rstrip("/")).name


def _param(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= _PARAM_LIMIT else text[: _PARAM_LIMIT - 3] + "..."


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ----------------------------------------------------------------------------------------------
# batched logging from worker processes (Train rank 0, Tune trials): one client per process
# ----------------------------------------------------------------------------------------------

_BATCH_METRICS = 1000  # MLflow's log_batch limits: 1000 metrics, 100 params, 100 tags per call
_BATCH_PARAMS = 100
_CLIENTS: dict[str, Any] = {}
_EXPERIMENTS: dict[tuple[str, str], str] = {}


def client(uri: str) -> Any:
    """The ``MlflowClient`` of this process for ``uri`` (created once, then reused)."""
    if uri not in _CLIENTS:
        from mlflow.tracking import MlflowClient

        _CLIENTS[uri] = MlflowClient(tracking_uri=uri)
    return _CLIENTS[uri]


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment ``name`` (created with the artifact root beside a SQLite store)."""
    key = (uri, name)
    if key not in _EXPERIMENTS:
        mlflow_client = client(uri)
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            try:
                _EXPERIMENTS[key] = mlflow_client.create_experiment(
                    name, artifact_location=_artifact_root(uri)
                )
            except Exception:  # created meanwhile by another process
                found = mlflow_client.get_experiment_by_name(name)
                if found is None:
                    raise
                _EXPERIMENTS[key] = found.experiment_id
        else:
            _EXPERIMENTS[key] = found.experiment_id
    return _EXPERIMENTS[key]


def start_batched_run(
    uri: str,
    experiment: str,
    *,
    run_name: str,
    config: Mapping[str, Any],
    tags: Mapping[str, Any],
) -> str:
    """Create a run with its flattened config as params and ``tags``; return its id.

    Two calls on the store per 100 params: for a Tune trial, one run costs a few
    transactions, not one per param.
    """
    from mlflow.entities import Param

    mlflow_client = client(uri)
    run = mlflow_client.create_run(
        experiment_id(uri, experiment),
        run_name=run_name,
        tags={k: str(v) for k, v in tags.items()},
    )
    params = [Param(k, _param(v)) for k, v in flatten(dict(config)).items()]
    for chunk in _chunks(params, _BATCH_PARAMS):
        mlflow_client.log_batch(run.info.run_id, params=list(chunk))
    return str(run.info.run_id)


def log_metric_rows(uri: str, run_id: str, rows: Sequence[tuple[int, Mapping[str, float]]]) -> int:
    """Log ``(step, metrics)`` rows with as few ``log_batch`` calls as the limits allow.

    Non-finite values are skipped. Returns the number of calls made.
    """
    import math
    import time

    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    items = [
        Metric(k, float(v), stamp, int(step))
        for step, metrics in rows
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    calls = 0
    for chunk in _chunks(items, _BATCH_METRICS):
        client(uri).log_batch(run_id, metrics=list(chunk))
        calls += 1
    return calls


def end_batched_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Close a run made by :func:`start_batched_run` (``FINISHED``, ``FAILED``, ``KILLED``)."""
    client(uri).set_terminated(run_id, status=status)
