"""``raymmi select``: pycytominer-compatible feature selection over a ``plates`` shard set.

Pass 1 computes mergeable statistics (:class:`~raymmi.plates._select.FeatureStats`) in Ray
tasks over groups of files, reduced on the driver as they arrive; ``frequency`` adds tasks that
count values per feature chunk (and value hash bucket) over every file. The driver decides
(:func:`~raymmi.plates._select.decide`); pass 2 rewrites every file without the dropped columns,
one task per file, keeping its path; the report is written into the output directory and to
MLflow, then the manifest commits the set.
"""

from __future__ import annotations

import contextlib
import math
import posixpath
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import ray

from raymmi.config import RayConfig, TrackingConfig, to_dict
from raymmi.io import (
    PartWriter,
    ShardSet,
    ShardSetWriter,
    claiming,
    open_part,
    open_shard_set,
    read_blocklist,
    resolve,
)
from raymmi.plates import (
    REPORT_NAME,
    FeatureStats,
    SelectConfig,
    ValueCounts,
    bucket_columns,
    decide,
    kept_features,
    samples_mask,
)
from raymmi.run._plates._driver import producer
from raymmi.run._runtime import cancel, gather, init_ray, stream
from raymmi.schema import FileEntry, Manifest, RaymmiError
from raymmi.track import tracked_run

# About 4 million values per record batch: bounded task memory whatever the width. At least
# 1,024 rows, so the co-moment products (rows x features^2) amortize their merge (features^2).
_BATCH_VALUES = 1 << 22
_MIN_BATCH_ROWS = 1024
# Pass-1 tasks per CPU: enough to balance uneven files, few enough that the driver merges
# only a handful of features^2 co-moment matrices.
_GROUPS_PER_CPU = 2


@claiming(
    lambda config, **_: {
        "uri": config.out,
        "inputs": [config.source],
        "overwrite": config.overwrite,
    }
)
def select_features(
    config: SelectConfig,
    *,
    ray_config: RayConfig | None = None,
    tracking: TrackingConfig | None = None,
) -> Manifest:
    """Drop features of a ``plates`` shard set as pycytominer ``feature_select`` would.

    Parameters
    ----------
    config
        Input, output, operations, cut-offs (:class:`~raymmi.plates._select.SelectConfig`).
    ray_config, tracking
        Where Ray runs; MLflow settings.

    Returns
    -------
    Manifest
        The committed output: same files (paths, plates, rows) and metadata, ``features`` =
        the kept ones, ``extra["feature_selection"]`` = counts per operation. The output
        directory also holds ``_feature_selection.csv`` (feature, op, reason, kept), logged to
        MLflow as ``select/feature_selection.csv``.

    Raises
    ------
    RaymmiError
        Bad input (not a ``plates`` set, no features, an unreadable blocklist, a samples query
        that does not evaluate or chooses no row, every feature dropped); nothing is written.
    """
    started = time.perf_counter()
    source = open_shard_set(config.source, kind="plates")
    _check_input(source, config)
    blocklist: tuple[str, ...] = ()
    blocklist_source = ""
    if "blocklist" in config.ops:
        blocklist, blocklist_source = read_blocklist(config.blocklist)
    init_ray(ray_config)
    cfg = to_dict(config)
    with (
        ShardSetWriter(config.out, overwrite=config.overwrite) as writer,
        tracked_run("select", config=cfg, tracking=tracking) as run,
    ):
        run.log_shard_set(config.source, source.manifest.to_dict(), context="input")
        stats, counts = _statistics(source, config)
        report = decide(
            stats,
            features=source.manifest.features,
            ops=config.ops,
            thresholds=config.thresholds,
            blocklist=blocklist,
            blocklist_source=blocklist_source,
            frequency=counts,
        )
        kept = kept_features(report)
        if not kept:
            by_op = report["op"].value_counts().to_dict()
            msg = (
                f"every one of the {len(report)} features would be dropped ({by_op}); loosen "
                "the cut-offs or drop an operation from --ops"
            )
            raise RaymmiError(msg)
        columns = [*source.manifest.metadata, *kept]
        refs = [
            _write_file.remote(source.uri, entry, writer.staging, columns)
            for entry in source.manifest.files
        ]
        files = gather(refs, desc="select: write", unit="file")
        fs, staging = resolve(writer.staging)
        with fs.open_output_stream(posixpath.join(staging, REPORT_NAME)) as f:
            f.write(report.to_csv(index=False).encode())
        dropped = report.loc[~report["kept"], "op"].value_counts()
        per_op = {op: int(dropped.get(op, 0)) for op in config.ops}
        manifest = writer.commit(
            Manifest(
                kind="plates",
                files=tuple(files),
                metadata=source.manifest.metadata,
                features=tuple(kept),
                producer=producer("select", cfg, run),
                parents=(source.parent_ref(),),
                extra={
                    **source.manifest.extra,
                    "feature_selection": {
                        "report": REPORT_NAME,
                        "ops": list(config.ops),
                        "features_in": len(report),
                        "features_kept": len(kept),
                        "dropped_per_op": per_op,
                        "rows_used": stats.n_rows,
                        "samples": config.samples,
                        "blocklist": blocklist_source or None,
                    },
                },
            )
        )
        run.log_table(report, "select/feature_selection.csv")
        run.log_shard_set(config.out, manifest.to_dict(), context="output")
        seconds = time.perf_counter() - started
        run.log_metrics(
            {
                "rows": manifest.num_rows,
                "rows_used": stats.n_rows,
                "files": len(manifest.files),
                "features_in": len(report),
                "features_kept": len(kept),
                "features_dropped": len(report) - len(kept),
                **{f"dropped_{op}": n for op, n in per_op.items()},
                "seconds": seconds,
            }
        )
    return manifest


def _check_input(source: ShardSet, config: SelectConfig) -> None:
    """Refuse, before any task starts, what would fail later or clobber the input."""
    _, src = resolve(config.source)
    _, out = resolve(config.out)
    if src == out:
        msg = f"--out {config.out!r} is the input shard set; choose another --out"
        raise RaymmiError(msg)
    if not source.manifest.features:
        msg = f"{config.source!r} has no feature columns; nothing to select"
        raise RaymmiError(msg)
    if not source.manifest.files:
        msg = f"{config.source!r} has no rows; nothing to select"
        raise RaymmiError(msg)
    if config.samples != "all":
        # Evaluate the query on the first file's metadata (no rows) to fail fast on a typo.
        schema = open_part(source.uri, source.manifest.files[0]).schema_arrow
        empty = schema.empty_table().select(list(source.manifest.metadata)).to_pandas()
        samples_mask(empty, config.samples)


def _statistics(source: ShardSet, config: SelectConfig) -> tuple[FeatureStats, ValueCounts | None]:
    """Pass 1 (and the value counts of ``frequency``), all tasks in flight together."""
    manifest = source.manifest
    features = list(manifest.features)
    metadata = list(manifest.metadata) if config.samples != "all" else []
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    groups = _groups(manifest.files, max(1, _GROUPS_PER_CPU * cpus))
    correlation = "correlation" in config.ops
    stat_refs = [
        _stats_task.remote(source.uri, group, features, metadata, config.samples, correlation)
        for group in groups
    ]
    count_refs: list[ray.ObjectRef] = []
    chunks: list[tuple[int, int]] = []
    n_buckets = 1
    if "frequency" in config.ops:
        chunks, n_buckets = _frequency_plan(
            len(features), manifest.num_rows, config.frequency_task_mb, cpus
        )
        paths = list(manifest.files)
        count_refs = [
            _counts_task.remote(
                source.uri, paths, features[a:b], metadata, config.samples, bucket, n_buckets
            )
            for a, b in chunks
            for bucket in range(n_buckets)
        ]
    try:
        stats = _reduce(stat_refs, desc="select: statistics")
    except BaseException:
        cancel(count_refs)
        raise
    if stats.n_rows == 0:
        cancel(count_refs)
        msg = f"samples={config.samples!r} chooses no row of {config.source!r}; fix the query"
        raise RaymmiError(msg)
    if not count_refs:
        return stats, None
    parts = gather(count_refs, desc="select: value counts", unit="task")
    per_chunk = []
    for c in range(len(chunks)):
        merged = parts[c * n_buckets]
        for part in parts[c * n_buckets + 1 : (c + 1) * n_buckets]:
            merged = merged.merge_buckets(part)
        per_chunk.append(merged)
    return stats, ValueCounts.concat(per_chunk)


def _groups(files: Sequence[FileEntry], n_groups: int) -> list[list[FileEntry]]:
    """Split files, in order, into at most ``n_groups`` runs of about equal rows."""
    n_groups = min(n_groups, len(files))
    total = sum(f.rows for f in files) or 1
    groups: list[list[FileEntry]] = [[] for _ in range(n_groups)]
    seen = 0
    for entry in files:
        index = min(n_groups - 1, seen * n_groups // total)
        groups[index].append(entry)
        seen += entry.rows
    return [g for g in groups if g]


def _frequency_plan(
    n_features: int, n_rows: int, budget_mb: int, cpus: int
) -> tuple[list[tuple[int, int]], int]:
    """Feature chunks and value buckets so that one task holds about ``budget_mb`` of values.

    A task keeps its chunk's values from every file (float32), then sorts them: about three
    copies of ``rows x chunk / buckets`` values.
    """
    per_feature = max(1, 3 * 4 * n_rows)
    budget = budget_mb << 20
    if per_feature > budget:
        width, n_buckets = 1, math.ceil(per_feature / budget)
    else:
        width, n_buckets = budget // per_feature, 1
    width = max(1, min(width, math.ceil(n_features / cpus)))
    chunks = [(a, min(a + width, n_features)) for a in range(0, n_features, width)]
    return chunks, n_buckets


def _reduce(refs: Sequence[ray.ObjectRef], *, desc: str) -> FeatureStats:
    """Merge partial statistics as their tasks finish (one partial in driver memory at once).

    The first failure cancels the remaining tasks and is raised as the task's own exception.
    """
    merged: FeatureStats | None = None
    for _, part in stream(lambda r: r, refs, max_in_flight=None, desc=desc):
        merged = part if merged is None else merged.merge(part)
    assert merged is not None
    return merged


def _iter_values(
    root: str,
    entry: FileEntry,
    features: Sequence[str],
    metadata: Sequence[str],
    samples: str,
) -> Iterator[np.ndarray]:
    """Yield float arrays of shape (rows, len(features)) of one file, chosen rows only."""
    batch_rows = max(_MIN_BATCH_ROWS, _BATCH_VALUES // max(1, len(features)))
    # Verified as read: the checksum covers the buffer decoded here (no second pass).
    reader = open_part(root, entry, columns=[*metadata, *features])
    with contextlib.closing(reader):
        for batch in reader.iter_batches(
            batch_size=batch_rows, columns=[*metadata, *features], use_threads=False
        ):
            values = np.column_stack(
                [batch.column(name).to_numpy(zero_copy_only=False) for name in features]
            )
            if samples != "all":
                frame = pa.Table.from_batches([batch.select(list(metadata))]).to_pandas()
                values = values[samples_mask(frame, samples)]
            yield values


@ray.remote(num_cpus=1)
def _stats_task(
    root: str,
    relpaths: list[FileEntry],
    features: list[str],
    metadata: list[str],
    samples: str,
    correlation: bool,
) -> FeatureStats:
    # Rows of small files are pooled up to one batch: the co-moment product costs
    # rows x features^2 and each merge features^2, so tiny blocks would be all merges.
    batch_rows = max(_MIN_BATCH_ROWS, _BATCH_VALUES // max(1, len(features)))
    merged = FeatureStats.of(np.empty((0, len(features)), np.float32), correlation=correlation)
    pending: list[np.ndarray] = []
    rows = 0
    for relpath in relpaths:
        for values in _iter_values(root, relpath, features, metadata, samples):
            pending.append(values)
            rows += len(values)
            if rows >= batch_rows:
                block = np.concatenate(pending)
                merged = merged.merge(
                    FeatureStats.of(block, correlation=correlation, features=features)
                )
                pending, rows = [], 0
    if pending:
        block = np.concatenate(pending)
        merged = merged.merge(FeatureStats.of(block, correlation=correlation, features=features))
    return merged


@ray.remote(num_cpus=1)
def _counts_task(
    root: str,
    relpaths: list[FileEntry],
    features: list[str],
    metadata: list[str],
    samples: str,
    bucket: int,
    n_buckets: int,
) -> ValueCounts:
    kept: list[list[np.ndarray]] = [[] for _ in features]
    for relpath in relpaths:
        for values in _iter_values(root, relpath, features, metadata, samples):
            for j, column in enumerate(bucket_columns(values, bucket=bucket, n_buckets=n_buckets)):
                kept[j].append(column)
    return ValueCounts.of_columns(
        [np.concatenate(parts) if parts else np.empty(0, np.float32) for parts in kept]
    )


@ray.remote(num_cpus=1)
def _write_file(root: str, entry: FileEntry, staging: str, columns: list[str]) -> FileEntry:
    reader = open_part(root, entry, columns=columns)
    with contextlib.closing(reader):
        full = reader.schema_arrow  # a property that rebuilds the schema on every access
        schema = pa.schema([full.field(name) for name in columns])
        batch_rows = max(_MIN_BATCH_ROWS, _BATCH_VALUES // max(1, len(columns)))
        with PartWriter(staging, entry.path, schema, plate=entry.plate) as part:
            for batch in reader.iter_batches(batch_size=batch_rows, columns=columns):
                part.write(pa.Table.from_batches([batch]))
    return part.close()
