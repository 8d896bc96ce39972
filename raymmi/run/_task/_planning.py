"""Planning: modalities, columns, batches (no writes)."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from raymmi.io import ShardSet, open_shard_set, resolve
from raymmi.run._runtime import gather
from raymmi.run._task._config import (
    _OTHER_CANDIDATES,
    _RNA_CANDIDATES,
    PSEUDOTIME_PREFIX,
    TaskConfig,
)
from raymmi.schema import CELL_ID, Manifest, RaymmiError


@dataclasses.dataclass(frozen=True)
class _Plan:
    config: TaskConfig
    method: str
    shard: ShardSet
    source: str | None  # predict: input; embed: normalized RNA for cc_cons (None: skipped)
    target: str | None  # predict: output
    modalities: tuple[str, ...]  # match: (rows, columns); embed: embedded; predict: both
    obs: tuple[str, ...]  # obs columns read besides cell_id and the batch
    read_batches: tuple[str, ...]  # batches whose cells are read
    notes: tuple[str, ...]

    @property
    def reads(self) -> tuple[str, ...]:
        """Modalities read from every file."""
        names = [*self.modalities, *(n for n in (self.source, self.target) if n is not None)]
        return tuple(dict.fromkeys(names))


def _close(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _is_normalized(manifest: Manifest, name: str) -> bool:
    """Whether modality ``name`` holds normalized values rather than raw counts.

    ``raymmi ingest cells`` stores ``layers['counts']`` when a file has it and ``.X``
    otherwise (recorded in ``extra.counts_from``); preprocess keeps raw ``rna``/``adt`` and
    writes binarized ``atac``; derived modalities (``rna_norm``, ``adt_clr`` ...) are values.
    """
    counts_from = manifest.extra.get("counts_from") or {}
    recorded = str(counts_from.get(name, "")).rstrip("/")
    if recorded.split("/")[-1] == "X":
        return True
    if name in ("rna", "adt"):
        return False
    if name == "atac":
        return manifest.producer.get("command") == "preprocess cells"
    return True


def _scaled(manifest: Manifest, name: str) -> bool:
    """Whether preprocess scaled ``name`` (z-scores, not the challenge's log-normalized values)."""
    if name not in ("rna_norm", "rna_hvg"):
        return False
    steps = ((manifest.producer.get("config") or {}).get("rna") or {}).get("steps") or ()
    return "scale" in steps


def _present(manifest: Manifest) -> list[str]:
    return [
        m.name if _is_normalized(manifest, m.name) else f"{m.name} (raw counts)"
        for m in manifest.modalities
    ]


def _default(manifest: Manifest, candidates: Sequence[str], *, flag: str, what: str) -> str:
    names = {m.name for m in manifest.modalities}
    for name in candidates:
        if name in names and _is_normalized(manifest, name):
            return name
    msg = (
        f"no {what} modality to default {flag} to: looked for {list(candidates)} (rna/adt/atac "
        f"only when not raw counts); the data has {_present(manifest)}. Run `raymmi "
        f"preprocess cells` on it, or name one with {flag}"
    )
    raise RaymmiError(msg)


def _named(manifest: Manifest, name: str, *, flag: str, task: str, uri: str) -> str:
    names = [m.name for m in manifest.modalities]
    if name not in names:
        msg = (
            f"{flag} {name!r}: task {task} needs modality {name!r}, which {uri!r} does not "
            f"have{_close(name, names)}; present: {_present(manifest)}"
        )
        raise RaymmiError(msg)
    return name


def _plan(config: TaskConfig) -> _Plan:
    """Resolve modalities and columns against the manifest; raise on anything missing."""
    shard = open_shard_set(config.data, kind="cells")
    manifest = shard.manifest
    method = config.resolved_method
    notes: list[str] = []

    def pick(name: str | None, candidates: Sequence[str], flag: str, what: str) -> str:
        if name is not None:
            return _named(manifest, name, flag=flag, task=config.task, uri=config.data)
        return _default(manifest, candidates, flag=flag, what=what)

    source: str | None
    target: str | None = None
    if config.task == "predict":
        source = pick(config.source, _RNA_CANDIDATES, "--source", "normalized RNA")
        target = pick(config.target, _OTHER_CANDIDATES, "--target", "normalized ADT/ATAC")
        if source == target:
            msg = f"--source and --target are both {source!r}; predict one modality from another"
            raise RaymmiError(msg)
        modalities: tuple[str, ...] = (source, target)
    else:
        if config.modalities:
            modalities = tuple(
                _named(manifest, m, flag="--modalities", task=config.task, uri=config.data)
                for m in config.modalities
            )
        else:
            modalities = (
                pick(config.source, _RNA_CANDIDATES, "--source", "normalized RNA"),
                pick(config.target, _OTHER_CANDIDATES, "--target", "normalized ADT/ATAC"),
            )
        source = None
        if config.task == "embed":
            if config.source is not None:
                source = _named(
                    manifest, config.source, flag="--source", task="embed", uri=config.data
                )
            else:
                try:
                    source = _default(manifest, _RNA_CANDIDATES, flag="--source", what="RNA")
                except RaymmiError:
                    notes.append("cc_cons not computed: no normalized RNA modality (--source)")
    for name in dict.fromkeys([*modalities, *(n for n in (source, target) if n)]):
        if _scaled(manifest, name):
            notes.append(
                f"{name} holds scaled z-scores (preprocess rna.steps has scale), not the "
                "challenge's log-normalized values; preprocess without scale for its protocol"
            )
    metadata = manifest.metadata
    if config.batch_key not in metadata:
        msg = (
            f"--batch-key {config.batch_key!r} is not an obs column of {config.data!r}"
            f"{_close(config.batch_key, metadata)}; it has {list(metadata)}"
        )
        raise RaymmiError(msg)
    obs: list[str] = []
    if config.task == "embed":
        if config.label_key not in metadata:
            msg = (
                f"--label-key {config.label_key!r} is not an obs column of {config.data!r}"
                f"{_close(config.label_key, metadata)}: embed scores need cell types; it has "
                f"{list(metadata)}"
            )
            raise RaymmiError(msg)
        obs = [config.label_key, *(c for c in metadata if c.startswith(PSEUDOTIME_PREFIX))]
        if not any(c.startswith(PSEUDOTIME_PREFIX) for c in metadata):
            notes.append(f"ti_cons not computed: no {PSEUDOTIME_PREFIX}_* obs column")
    read_batches = (*config.train_batches, *config.test_batches)
    if config.task == "embed" and config.embed_cells == "test":
        read_batches = config.test_batches
    return _Plan(
        config=config,
        method=method,
        shard=shard,
        source=source,
        target=target,
        modalities=modalities,
        obs=tuple(dict.fromkeys(c for c in obs if c not in (CELL_ID, config.batch_key))),
        read_batches=read_batches,
        notes=tuple(notes),
    )


def _in_batches(table: pa.Table, batch_key: str, batches: Sequence[str]) -> pa.Array:
    column = pc.cast(table.column(batch_key), pa.string())
    return pc.is_in(column, value_set=pa.array(list(batches), pa.string()))


@ray.remote(num_cpus=1)
def _batch_counts_task(path: str, batch_key: str) -> dict[str, int]:
    fs, local = resolve(path)
    column = pq.read_table(local, columns=[batch_key], filesystem=fs).column(batch_key)
    counts = pc.value_counts(pc.cast(column, pa.string()))
    return {
        str(v): int(n)
        for v, n in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
    }


def _check_batches(plan: _Plan) -> dict[str, int]:
    """Cells per batch over the whole set; the split must name present, distinct batches."""
    config = plan.config
    refs = [_batch_counts_task.remote(p, config.batch_key) for p in plan.shard.file_uris()]
    counts: dict[str, int] = {}
    for part in gather(refs, desc="task: batches", unit="file"):
        for name, n in part.items():
            counts[name] = counts.get(name, 0) + n
    shown = ", ".join(f"{b} ({n} cells)" for b, n in sorted(counts.items()))
    if len(counts) < 2:
        msg = (
            f"{config.data!r} holds fewer than two batches ({shown or 'no cells'} in "
            f"{config.batch_key!r}): the tasks hold whole batches out, so they need at least "
            "two; ingest with the right --batch-key, or use a set with more batches"
        )
        raise RaymmiError(msg)
    absent = [b for b in (*config.train_batches, *config.test_batches) if b not in counts]
    if absent:
        msg = f"batches {absent} have no cells in {config.data!r}; its batches: {shown}"
        raise RaymmiError(msg)
    return counts
