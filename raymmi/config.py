"""Frozen configuration dataclasses for every stage, loaded from YAML/dicts with clear errors.

Every stage's configuration is one dataclass tree. Command-line flags, ``--config file.yaml``
and ``--set key=value`` overrides all end up in the same tree; :func:`to_dict` turns it into
the plain dictionary logged to MLflow and stored in output manifests.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from raymmi.query import parse_query
from raymmi.schema import RaymmiError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RayConfig:
    """Where and how Ray runs.

    Parameters
    ----------
    address
        ``None``: ``RAY_ADDRESS`` if set, else a local Ray started on demand. Otherwise a
        cluster address (``ray://host:10001``, ``host:6379`` or ``auto``).
    num_cpus
        CPUs of the local Ray (default: all cores). Ignored when joining a cluster.
    object_store_mb
        Object store of the local Ray in MiB (default: 25% of memory, at most 8 GiB).
    """

    address: str | None = None
    num_cpus: int | None = None
    object_store_mb: int | None = None

    def __post_init__(self) -> None:
        if self.num_cpus is not None and (
            isinstance(self.num_cpus, bool)
            or not isinstance(self.num_cpus, int)
            or self.num_cpus < 1
        ):
            msg = (
                f"--num-cpus {self.num_cpus!r}: a local Ray needs at least 1 CPU to run any "
                "task; give --num-cpus 1 or more, or leave it out to use every core"
            )
            raise RaymmiError(msg)
        if self.object_store_mb is not None and (
            not isinstance(self.object_store_mb, int) or self.object_store_mb < 80
        ):
            msg = (
                f"--object-store-mb {self.object_store_mb!r}: Ray's object store needs at least "
                "80 MiB (75 MiB is Ray's floor); give more, or leave it out (25% of memory)"
            )
            raise RaymmiError(msg)
        if self.address is not None and not str(self.address).strip():
            msg = "--address is empty; give the head's host:port, or leave it out"
            raise RaymmiError(msg)


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """MLflow settings: ``uri`` ``None`` means ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``."""

    uri: str | None = None
    experiment: str = "raymmi"
    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class IngestPlatesConfig:
    """``raymmi ingest plates``: wide tables or CellProfiler folders into a ``plates`` set.

    Parameters
    ----------
    sources
        CSV / CSV.gz / Parquet files, or folders of CellProfiler sites.
    out
        Output shard-set directory.
    negcon
        Query marking negative-control rows (:mod:`raymmi.query` grammar, never run as
        code); default: ``Metadata_is_negcon`` if present.
    on_nan
        Non-finite feature values: ``fail`` (default), ``drop-rows`` or ``keep`` (as NaN).
    aggregate
        CellProfiler folders only: aggregate cells to wells by ``median`` or ``mean``.
    batch_rows
        Rows per streamed record batch (memory bound per task); default: about 4 million
        feature values per batch.
    """

    sources: tuple[str, ...]
    out: str
    negcon: str | None = None
    on_nan: Literal["fail", "drop-rows", "keep"] = "fail"
    aggregate: Literal["median", "mean"] | None = None
    batch_rows: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_choice("on_nan", self.on_nan, ("fail", "drop-rows", "keep"))
        check_choice("aggregate", self.aggregate, (None, "median", "mean"))
        if not self.sources:
            msg = "ingest plates needs at least one source table or CellProfiler folder"
            raise RaymmiError(msg)
        if self.batch_rows is not None:
            check_positive("batch_rows", self.batch_rows)
        if self.negcon is not None:
            parse_query(self.negcon, what="--negcon query")


@dataclasses.dataclass(frozen=True)
class IngestCellsConfig:
    """``raymmi ingest cells``: paired h5ad/h5mu modalities into a ``cells`` set.

    Parameters
    ----------
    out
        Output ``cells`` shard set.
    rna
        RNA ``.h5ad`` (or ``.h5mu``; then ``atac``/``adt`` default to its other modalities).
    atac, adt
        The paired second modality (at most one of them).
    chunk_size
        Cells per read chunk and per output file.
    batch_key
        ``obs`` column holding the batch; missing → one batch named ``batch0``.
    layer
        Matrix read from every modality: ``X``, a name in ``layers``, or unset for
        ``layers["counts"]`` when present, else ``X``. A challenge's normalized ``X`` is
        ``layer: X`` (``raymmi task`` scores it; ``preprocess`` expects raw counts).
    check_counts
        Refuse negative, non-integer or NaN/inf values read from a ``layers["counts"]``
        (they are not raw counts), naming the layer and file; ``false`` to store them anyway.
    """

    rna: str
    out: str
    atac: str | None = None
    adt: str | None = None
    chunk_size: int = 10_000
    batch_key: str = "batch"
    layer: str | None = None
    overwrite: bool = False
    check_counts: bool = True

    def __post_init__(self) -> None:
        if self.atac is not None and self.adt is not None:
            msg = "give at most one of --atac and --adt (raymmi pairs RNA with one modality)"
            raise RaymmiError(msg)
        check_positive("chunk_size", self.chunk_size)


@dataclasses.dataclass(frozen=True)
class NormalizeConfig:
    """``raymmi normalize``: per-plate / global normalization of a ``plates`` shard set.

    Parameters
    ----------
    source
        Input ``plates`` shard set.
    out
        Output shard set.
    method
        ``standardize`` (mean/sd), ``robustize`` (median/IQR), ``mad_robustize``
        ((x - median) / (1.4826 MAD + epsilon)), ``mean`` (centering), ``spherize`` (see
        ``spherize_method``) or ``combat`` (by ``batch_key``; ``nonparametric`` priors).
    reference
        Rows the statistics come from: ``negcon`` (the plate's negative controls), ``all``
        (every row of the plate), ``negcon-global`` (negative controls of all plates pooled),
        ``batch`` (every row of the plate's batch). ComBat always uses all rows per batch.
    negcon
        query re-defining the negative controls (:mod:`raymmi.query`) (default: the stored flag).
    batch_key
        Metadata column holding the batch (``batch`` reference, ComBat).
    epsilon
        Added to the spread of ``standardize``/``robustize``/``mad_robustize``.
    spherize_method, spherize_epsilon
        ``spherize``: the whitening (``ZCA``, ``PCA``; ``-cor`` on the correlation matrix) and
        the epsilon added to every singular value.
    nonparametric
        ``combat``: nonparametric (instead of parametric) empirical-Bayes priors.
    """

    source: str
    out: str
    method: Literal["standardize", "robustize", "mad_robustize", "mean", "spherize", "combat"] = (
        "standardize"
    )
    reference: Literal["negcon", "all", "negcon-global", "batch"] = "negcon"
    negcon: str | None = None
    batch_key: str = "Metadata_Batch"
    epsilon: float = 0.0
    spherize_method: Literal["ZCA", "ZCA-cor", "PCA", "PCA-cor"] = "ZCA"
    spherize_epsilon: float = 1e-6
    nonparametric: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_choice(
            "method",
            self.method,
            ("standardize", "robustize", "mad_robustize", "mean", "spherize", "combat"),
        )
        check_choice("reference", self.reference, ("negcon", "all", "negcon-global", "batch"))
        check_choice("spherize_method", self.spherize_method, ("ZCA", "ZCA-cor", "PCA", "PCA-cor"))
        if self.epsilon < 0 or self.spherize_epsilon < 0:
            msg = f"epsilon={self.epsilon!r} and spherize_epsilon must be >= 0"
            raise RaymmiError(msg)
        if self.negcon is not None:
            parse_query(self.negcon, what="--negcon query")


@dataclasses.dataclass(frozen=True)
class IngestImagesConfig:
    """``raymmi ingest images``: Cell Painting fields (a LoadData CSV) into a ``plates`` set.

    Parameters
    ----------
    load_data
        CellProfiler LoadData CSV: one row per field, ``Metadata_Plate/Well/Site``,
        ``FileName_<Ch>``/``PathName_<Ch>`` per channel, optional ``ObjectsFileName_<Obj>``.
    out
        Output shard-set directory (one row per cell; per well with ``aggregate``).
    nuclei_channel
        Channel the nuclei are found in (``DNA``; JUMP's ``OrigDNA`` is ``DNA``).
    cell_channel
        Channel cells are grown over (``AGP``); ``None``: nuclei only.
    measures
        Any of ``sizeshape``, ``intensity``, ``texture``, ``granularity``, ``radial``,
        ``correlation``.
    illum
        ``none`` or ``plate`` (a per-plate, per-channel illumination function from the mean of
        the plate's fields, smoothed; each field is divided by it).
    aggregate
        ``median`` or ``mean``: one row per well instead of per cell.
    negcon
        pandas query over the LoadData metadata marking negative-control fields.
    nuclei_min_diameter, nuclei_max_diameter
        Nucleus diameter range in pixels (objects outside it are dropped).
    threshold
        ``otsu``, ``otsu3`` (three classes, middle one foreground) or ``li`` (min cross-entropy,
        the default: it matched CellProfiler's counts on the JUMP and six-channel fields).
    discard_border_cells
        Drop cells touching the field's border (with their nuclei).
    embed
        CNN architecture for per-cell crop embeddings (``Embedding_<i>`` columns); ``None``: off.
    weights
        Weights file of ``embed`` (``torch.load(weights_only=True)``), or ``random`` (tests).
    crop_size
        Side of the per-cell crops around each nucleus (pixels).
    embed_only
        With ``embed``: write the embeddings instead of (not beside) the measurements.
    workers
        Fields measured at once (default: the cluster's CPUs).
    """

    load_data: str
    out: str
    nuclei_channel: str
    cell_channel: str | None = None
    measures: tuple[str, ...] = (
        "sizeshape",
        "intensity",
        "texture",
        "granularity",
        "radial",
        "correlation",
    )
    illum: Literal["none", "plate"] = "none"
    aggregate: Literal["median", "mean"] | None = None
    negcon: str | None = None
    nuclei_min_diameter: float = 8.0
    nuclei_max_diameter: float = 80.0
    threshold: Literal["otsu", "otsu3", "li"] = "li"
    discard_border_cells: bool = False
    embed: str | None = None
    weights: str | None = None
    crop_size: int = 64
    embed_only: bool = False
    workers: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_choice("illum", self.illum, ("none", "plate"))
        check_choice("aggregate", self.aggregate, (None, "median", "mean"))
        check_choice("threshold", self.threshold, ("otsu", "otsu3", "li"))
        allowed = ("sizeshape", "intensity", "texture", "granularity", "radial", "correlation")
        bad = [m for m in self.measures if m not in allowed]
        if bad or (not self.measures and not self.embed):
            msg = (
                f"--measure {list(self.measures)}: {bad or 'none given'}; "
                f"choose from {list(allowed)}"
            )
            raise RaymmiError(msg)
        if not 0 < self.nuclei_min_diameter < self.nuclei_max_diameter:
            msg = (
                f"nuclei diameters ({self.nuclei_min_diameter}, {self.nuclei_max_diameter}) "
                "must satisfy 0 < min < max"
            )
            raise RaymmiError(msg)
        if self.embed is not None and not self.weights:
            msg = "--embed needs --weights PATH (a state_dict file) or --weights random (tests)"
            raise RaymmiError(msg)
        if self.embed is None and self.embed_only:
            msg = "embed_only needs --embed MODEL"
            raise RaymmiError(msg)
        check_positive("crop_size", self.crop_size)
        if self.workers is not None:
            check_positive("workers", self.workers)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """``raymmi export``: a shard set to ``.parquet``/``.csv`` (plates) or ``.h5ad`` (cells).

    Parameters
    ----------
    source
        Shard set directory.
    out
        Output file: ``.parquet``, ``.csv`` or ``.csv.gz`` (plates), ``.h5ad`` or ``.h5mu``.
    """

    source: str
    out: str
    overwrite: bool = False


@dataclasses.dataclass(frozen=True)
class EvaluatePlatesConfig:
    """``raymmi evaluate plates``: diagnostics of ``plates`` shard sets side by side, one report.

    Parameters
    ----------
    sources
        ``plates`` shard sets holding the same plates, typically raw and normalized.
    out
        Local report directory (``index.html``, figures, ``summary.csv``, per-well scores).
    batch_key, label_key
        Metadata columns of the batch and of the compound (JUMP: ``Metadata_JCP2022``).
    sample
        Wells in the seeded sample per shard set (embedding, GMM, classifiers, UMAP).
    map_plates_per_batch, umap_plates_per_batch
        Plates per batch whose wells enter the replicate mAP / are drawn over the UMAP.
    top_n
        Most and least outlying treated wells listed.
    seed
        Seed of every sample and fit.
    """

    sources: tuple[str, ...]
    out: str
    batch_key: str = "Metadata_Batch"
    label_key: str = "Metadata_Compound"
    sample: int = 5000
    map_plates_per_batch: int = 4
    umap_plates_per_batch: int = 2
    top_n: int = 20
    seed: int = 0
    overwrite: bool = False


@dataclasses.dataclass(frozen=True)
class GenerateImagesConfig:
    """``raymmi generate images``: synthetic Cell Painting fields (TIFFs + a LoadData CSV).

    Parameters
    ----------
    out
        Folder for the TIFFs and ``load_data.csv``.
    plates, wells, sites
        Plates, wells per plate and fields per well.
    size
        Side of a field in pixels.
    seed
        Seed of every field.
    """

    out: str
    plates: int = 1
    wells: int = 4
    sites: int = 2
    size: int = 256
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("plates", "wells", "sites", "size"):
            check_positive(name, getattr(self, name))


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer and loop settings of ``raymmi train``; ``None`` takes the model's default.

    Parameters
    ----------
    lr, weight_decay
        Adam learning rate and (L2-style) weight decay.
    batch_size
        Cells per mini-batch *per worker*.
    epochs
        Passes over the training cells.
    seed
        Seed of the weights, the train/validation split and the shuffling.
    amp
        Mixed precision (bfloat16 autocast) when training on GPU; ignored on CPU.
    shuffle_buffer
        Rows of the local shuffle buffer of each worker's data iterator (0: no shuffle).
    """

    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    seed: int = 0
    amp: bool = True
    shuffle_buffer: int = 4096

    def __post_init__(self) -> None:
        for name in ("lr", "batch_size", "epochs"):
            value = getattr(self, name)
            if value is not None:
                check_positive(f"optim.{name}", value)
        if self.weight_decay is not None and self.weight_decay < 0:
            msg = f"optim.weight_decay={self.weight_decay!r} must be >= 0"
            raise RaymmiError(msg)
        if self.shuffle_buffer < 0:
            msg = f"optim.shuffle_buffer={self.shuffle_buffer!r} must be >= 0"
            raise RaymmiError(msg)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``raymmi train MODEL``: one model trained with Ray Train from a ``cells`` shard set.

    Parameters
    ----------
    model_name
        A registered model (``raymmi.models.model_names()``).
    data
        ``cells`` shard set (usually the output of ``raymmi preprocess cells``).
    out
        Output folder: ``config.yaml``, ``model.pt``, ``metrics.json``, ``checkpoints/`` and
        the ``embeddings`` shard set (committed last).
    model
        The model's own settings (``model.*`` keys; see the model's ``Config``).
    optim
        Optimizer and loop settings (``optim.*``).
    extra_data
        SAILERX hybrid training: a ``cells`` set of ATAC-only cells trained with ``L_Inv``
        alone, one batch of them after every ``hybrid_every - 1`` paired batches.
    hybrid_every
        Interleaving period of the extra cells (the reference code: every third step).
    label_key
        ``obs`` column with known labels (``cell_type``): ARI/NMI/silhouette of the embedding
        (and of the reference embedding, if the model has one) go to ``metrics.json``.
    val_fraction
        Share of cells held out (by a hash of the cell id) for the validation loss.
    workers
        Ray Train workers (DDP processes).
    gpus_per_worker
        GPUs per worker (0: CPU and gloo; > 0: CUDA, NCCL and AMP).
    cpus_per_worker
        CPUs per worker; ``None``: 1, or less on a cluster too small to leave a CPU for the
        Ray Data readers (raymmi/run/README.md, "Ray Tune": workers must not starve the readers).
    checkpoint_every
        Epochs between checkpoints (the last epoch always checkpoints).
    keep_checkpoints
        Checkpoints kept on disk.
    max_failures
        Worker failures survived by restarting from the last checkpoint.
    embed
        At the end, embed every cell into the ``OUT/embeddings`` shard set and score it
        (``ari``, ``nmi``, ``silhouette``, ``reference_*``). Off, the run ends after its last
        checkpoint with ``model.pt`` and ``metrics.json`` (the last epoch's metrics): what a
        Ray Tune trial needs, since the search ranks trials on the per-epoch metrics and the
        winner is retrained with ``raymmi train --config best.yaml``.
    impute
        Also write the model's imputations (decoder output) next to the embedding. Off by
        default: they are dense cells x features matrices (20,000 cells x 5,000 peaks is
        400 MB), wanted only to look at denoised values.
    impute_format
        How imputations are stored: ``"float32"`` (dense), ``"float16"`` (dense, half the
        size, 3 significant digits) or ``"sparse"`` (only values with
        ``|value| >= impute_threshold``, e.g. ATAC probabilities above 0.1).
    impute_threshold
        With ``impute_format="sparse"``: the smallest absolute value kept (> 0).
    metrics_max_cells
        Cells (a seeded sample) the clustering metrics are computed on.
    score_every
        With ``label_key``: epochs between validation scores (``val_ari``, ``val_nmi``,
        ``val_silhouette`` and ``val_reference_*``, each the mean over the workers' shards of
        the validation cells), reported with the losses so a tuner can use them.
    fault_injection
        Testing hook ``"rank:epoch"``: that worker kills its own process once, at the start
        of that epoch, to exercise recovery.
    """

    model_name: str
    data: str
    out: str
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    optim: OptimConfig = OptimConfig()
    extra_data: str | None = None
    hybrid_every: int = 3
    label_key: str | None = None
    val_fraction: float = 0.1
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    max_failures: int = 2
    embed: bool = True
    impute: bool = False
    impute_format: Literal["float32", "float16", "sparse"] = "float32"
    impute_threshold: float = 0.0
    metrics_max_cells: int = 20_000
    score_every: int = 1
    overwrite: bool = False
    fault_injection: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "workers",
            "checkpoint_every",
            "keep_checkpoints",
            "metrics_max_cells",
            "score_every",
        ):
            check_positive(name, getattr(self, name))
        if self.hybrid_every < 2:
            msg = f"hybrid_every={self.hybrid_every!r} must be >= 2 (one extra batch per period)"
            raise RaymmiError(msg)
        if not 0.0 <= self.val_fraction < 1.0:
            msg = f"val_fraction={self.val_fraction!r} must be in [0, 1)"
            raise RaymmiError(msg)
        if self.gpus_per_worker < 0 or (self.cpus_per_worker or 1) <= 0:
            msg = "gpus_per_worker must be >= 0 and cpus_per_worker > 0"
            raise RaymmiError(msg)
        if self.max_failures < 0:
            msg = f"max_failures={self.max_failures!r} must be >= 0"
            raise RaymmiError(msg)
        check_choice("impute_format", self.impute_format, ["float32", "float16", "sparse"])
        if self.impute_format == "sparse" and not self.impute_threshold > 0:
            msg = (
                f"impute_format='sparse' needs impute_threshold > 0 (got "
                f"{self.impute_threshold!r}): the values below it are dropped, e.g. 0.1"
            )
            raise RaymmiError(msg)
        if self.fault_injection is not None:
            rank, sep, epoch = self.fault_injection.partition(":")
            if not (sep and rank.isdigit() and epoch.isdigit()):
                msg = f"fault_injection={self.fault_injection!r} must look like 'rank:epoch'"
                raise RaymmiError(msg)


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    """Raise a :class:`RaymmiError` naming ``name`` if ``value`` is not in ``allowed``."""
    if value not in allowed:
        msg = f"{name}={value!r} is not one of {list(allowed)}"
        raise RaymmiError(msg)


def check_positive(name: str, value: float) -> None:
    """Raise a :class:`RaymmiError` naming ``name`` unless ``value > 0``."""
    if not value > 0:
        msg = f"{name}={value!r} must be > 0"
        raise RaymmiError(msg)


def to_dict(config: object) -> dict[str, Any]:
    """Plain nested dictionary of a config dataclass (tuples become lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        msg = f"expected a config dataclass instance, got {type(config).__name__}"
        raise TypeError(msg)
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (for MLflow params and ``--set`` keys)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "config") -> T:
    """Build the dataclass ``cls`` from a (nested) dictionary, checking keys and types.

    Raises
    ------
    RaymmiError
        Unknown keys (with the allowed ones listed), missing required keys, or a value whose
        type does not match the field.
    """
    if not isinstance(data, Mapping):
        msg = f"{where} must be a mapping, got {type(data).__name__}"
        raise RaymmiError(msg)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hints_text = "".join(
            f"; did you mean {close[0]!r} for {key!r}?"
            for key in unknown
            if (close := difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6))
        )
        msg = f"{where}: unknown key(s) {unknown}{hints_text}; allowed: {sorted(fields)}"
        raise RaymmiError(msg)
    kwargs = {
        name: _coerce(hints[name], value, where=f"{where}.{name}") for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except TypeError as err:
        missing = sorted(
            n
            for n, f in fields.items()
            if n not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        msg = f"{where}: missing required key(s) {missing}" if missing else f"{where}: {err}"
        raise RaymmiError(msg) from err


def _coerce(hint: Any, value: Any, *, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where=where)
            except RaymmiError as err:
                errors.append(str(err))
        raise RaymmiError(errors[0])
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=where)  # type: ignore[arg-type]
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            value = [value]
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where=where) for v in value)
    if origin is typing.Literal:
        if value not in args:
            msg = f"{where}={value!r} is not one of {list(args)}"
            raise RaymmiError(msg)
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads ``1e-3`` (no dot) as a string: accept every spelling Python's float does
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and not _is_instance(value, hint):
        msg = f"{where}={value!r} should be of type {hint.__name__}"
        raise RaymmiError(msg)
    return value


def _is_instance(value: Any, hint: type) -> bool:
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a :class:`RaymmiError` names the file on any problem."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as err:
        msg = f"config file {str(path)!r} does not exist"
        raise RaymmiError(msg) from err
    except yaml.YAMLError as err:
        msg = f"config file {str(path)!r} is not valid YAML: {err}"
        raise RaymmiError(msg) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        msg = f"config file {str(path)!r} must hold a mapping, not {type(data).__name__}"
        raise RaymmiError(msg)
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested dictionary."""
    out = _plain(dict(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            msg = f"--set {item!r} is not of the form key=value (e.g. --set seed=3)"
            raise RaymmiError(msg)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                msg = f"--set {item!r}: {part!r} is not a section"
                raise RaymmiError(msg)
        node[leaf] = yaml.safe_load(raw)
    return out
