"""Search spaces of ``raymmi tune``: parsed from YAML, checked against the training config.

Pure: no Ray, no torch, no I/O beyond reading the YAML file. A space mirrors the training
config tree (the keys ``--set`` takes); each leaf is a range or a fixed value::

    model.gamma: {loguniform: [10, 1.0e5]}     # log-uniform between the bounds
    model.lam: {loguniform: [0.01, 100]}
    optim.lr: {uniform: [1.0e-4, 1.0e-3]}      # uniform between the bounds
    model.z_dim: {choice: [16, 32, 50]}        # one of the values
    model.kl_cycle: {grid: [0, 100]}           # every value (exhaustive with --search grid)
    model.lambdas.0: {loguniform: [0.1, 10]}   # one element of a list setting (UMINT's λ_i)
    model.recon_weight: 20                     # a fixed value, as --set would give

Nested sections (``model: {gamma: {loguniform: [10, 1.0e5]}}``) mean the same as dotted keys.
``{type: loguniform, low: 10, high: 1.0e5}`` and ``{type: choice, values: [...]}`` are accepted
too. Integer settings (``model.z_dim``) sampled from a range are rounded to integers.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from raymmi.config import OptimConfig, TrainConfig, from_dict, load_yaml
from raymmi.schema import RaymmiError

Kind = Literal["loguniform", "uniform", "choice", "grid"]
KINDS: tuple[str, ...] = ("loguniform", "uniform", "choice", "grid")
SEARCHES = ("optuna", "random", "grid")
SCHEDULERS = ("asha", "none")
# Top-level TrainConfig fields a space may vary (the rest are plumbing, not hyperparameters).
TOP_LEVEL_TUNABLE = ("hybrid_every", "val_fraction")
# Keys a space must not vary, with the reason.
FORBIDDEN = {
    "optim.seed": "seeds are a dimension of their own: use --seeds K (each configuration is "
    "trained with seeds optim.seed .. optim.seed+K-1)",
    "optim.epochs": "the epoch budget is fixed per search (--epochs or --set optim.epochs=N); "
    "ASHA stops weak trials early instead",
}


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched setting.

    Parameters
    ----------
    key
        Dotted config key (``model.gamma``); an element of a list setting ends with its index
        (``model.lambdas.0``).
    kind
        ``loguniform``/``uniform`` (``low``, ``high``) or ``choice``/``grid`` (``values``).
    integer
        The setting is an integer: range samples are rounded.
    """

    key: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()
    integer: bool = False

    @property
    def log(self) -> bool:
        """Whether the dimension is searched (and best drawn) on a log scale."""
        return self.kind == "loguniform"

    @property
    def is_range(self) -> bool:
        return self.kind in ("loguniform", "uniform")

    def cast(self, value: Any) -> Any:
        """A sampled value as the setting's type (integers rounded)."""
        if self.is_range and self.integer:
            return round(float(value))
        if self.is_range:
            return float(value)
        return value

    def sample(self, rng: Any) -> Any:
        """One value drawn with ``rng`` (a ``numpy.random.Generator``)."""
        if self.is_range:
            assert self.low is not None and self.high is not None
            if self.log:
                return self.cast(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
            return self.cast(rng.uniform(self.low, self.high))
        return self.values[int(rng.integers(len(self.values)))]

    def describe(self) -> str:
        if self.is_range:
            return f"{self.kind}[{self.low:g}, {self.high:g}]" + (" int" if self.integer else "")
        return f"{self.kind}{list(self.values)}"


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The searched dimensions and the fixed settings of one search."""

    dims: tuple[Dimension, ...]
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.dims)

    def dim(self, key: str) -> Dimension:
        return next(d for d in self.dims if d.key == key)

    def grid_size(self) -> int:
        """Configurations of an exhaustive grid (ranges are not allowed there)."""
        return math.prod(len(d.values) for d in self.dims)

    def grid(self) -> list[dict[str, Any]]:
        """Every configuration of the grid, in a stable order (first key varies slowest)."""
        ranged = [d.key for d in self.dims if d.is_range]
        if ranged:
            msg = (
                f"--search grid needs grid or choice values for every key; {ranged} are ranges "
                "(write e.g. {grid: [10, 100, 1000]}, or use --search optuna / random)"
            )
            raise RaymmiError(msg)
        return [
            dict(zip(self.keys, combo, strict=True))
            for combo in itertools.product(*(d.values for d in self.dims))
        ]

    def sample(self, n: int, seed: int) -> list[dict[str, Any]]:
        """``n`` seeded random configurations (ranges drawn, choices and grids picked)."""
        import numpy as np

        rng = np.random.default_rng(seed)
        return [{d.key: d.sample(rng) for d in self.dims} for _ in range(n)]

    def to_dict(self) -> dict[str, Any]:
        """The space as plain data (logged, and compared on ``--resume``)."""
        out: dict[str, Any] = {}
        for d in self.dims:
            if d.is_range:
                out[d.key] = {d.kind: [d.low, d.high]}
            else:
                out[d.key] = {d.kind: list(d.values)}
        out.update({k: v for k, v in self.fixed.items()})
        return out


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The training config tree ``base`` with dotted ``params`` set (list elements included).

    ``base`` is a nested dictionary as :func:`raymmi.config.to_dict` gives; a key such as
    ``model.lambdas.1`` sets one element of the list at ``model.lambdas``, which must then be
    given in full, either in ``base`` or by the other element keys.
    """
    out = _deep_copy(base)
    elements: dict[str, dict[int, Any]] = {}
    for key, value in params.items():
        head, index = split_index(key)
        if index is None:
            _set(out, head, value)
        else:
            elements.setdefault(head, {})[index] = value
    for head, values in elements.items():
        current = _get(out, head)
        if current is None:
            size = max(values) + 1
            missing = sorted(set(range(size)) - set(values))
            if missing:
                msg = (
                    f"{head} has no value in the base config, so the space must give every "
                    f"element; {[f'{head}.{i}' for i in missing]} are missing"
                )
                raise RaymmiError(msg)
            current = [None] * size
        listed = list(current) if isinstance(current, list | tuple) else [current]
        for index, value in values.items():
            if index >= len(listed):
                msg = f"{head}.{index}: {head} has {len(listed)} elements ({listed})"
                raise RaymmiError(msg)
            listed[index] = value
        _set(out, head, listed)
    return out


def split_index(key: str) -> tuple[str, int | None]:
    """``"model.lambdas.1"`` or ``"model.lambdas[1]"`` → ``("model.lambdas", 1)``."""
    if key.endswith("]") and "[" in key:
        head, _, tail = key[:-1].rpartition("[")
        if tail.isdigit():
            return head, int(tail)
    head, _, tail = key.rpartition(".")
    if head and tail.isdigit():
        return head, int(tail)
    return key, None


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: _deep_copy(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v
        for k, v in data.items()
    }


def _get(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


# ----------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------


def load_space(path: str | Path, model_config: type, *, base: Mapping[str, Any]) -> SearchSpace:
    """Read and check a space YAML (see the module docstring) for a model.

    Parameters
    ----------
    path
        The YAML file.
    model_config
        The model's ``Config`` dataclass (``raymmi.models.model_class(name).Config``): the
        ``model.*`` keys are its fields.
    base
        The base training config tree (``to_dict(TrainConfig)``) every trial starts from.
    """
    return parse_space(load_yaml(path), model_config, base=base, where=str(path))


def parse_space(
    data: Mapping[str, Any],
    model_config: type,
    *,
    base: Mapping[str, Any],
    where: str = "space",
) -> SearchSpace:
    """Check a space given as a (nested or dotted) mapping; see :func:`load_space`.

    Raises
    ------
    RaymmiError
        A key that is not a tunable config key (close matches named), an empty or malformed
        range, a value the setting does not accept, or no searched dimension at all.
    """
    leaves = _leaves(data)
    if not leaves:
        msg = f"{where}: the search space is empty; give at least one key with a range"
        raise RaymmiError(msg)
    fields = tunable_keys(model_config)
    dims: list[Dimension] = []
    fixed: dict[str, Any] = {}
    for key, spec in leaves.items():
        hint = _check_key(key, fields, where)
        integer = _is_int(hint)
        if _is_range_spec(spec):
            dims.append(_dimension(key, spec, integer=integer, where=where))
        else:
            fixed[key] = spec
    if not dims:
        msg = (
            f"{where}: no key has a range ({', '.join(KINDS)}); fixed values alone are "
            "a training config, not a search"
        )
        raise RaymmiError(msg)
    space = SearchSpace(dims=tuple(dims), fixed=fixed)
    check_values(space, model_config, base=base, where=where)
    return space


def tunable_keys(model_config: type) -> dict[str, Any]:
    """Dotted key → type hint of every setting a space may name for this model."""
    out: dict[str, Any] = {}
    for prefix, cls in (("model", model_config), ("optim", OptimConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f"{prefix}.{f.name}"] = hints[f.name]
    train_hints = typing.get_type_hints(TrainConfig)
    for name in TOP_LEVEL_TUNABLE:
        out[name] = train_hints[name]
    return out


def _leaves(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not _is_range_spec(value):
            out.update(_leaves(value, f"{name}."))
        else:
            out[name] = value
    return out


def _is_range_spec(value: Any) -> bool:
    if not isinstance(value, Mapping):
        return False
    return bool(set(value) & set(KINDS)) or "type" in value


def _check_key(key: str, fields: Mapping[str, Any], where: str) -> Any:
    head, index = split_index(key)
    if head in FORBIDDEN:
        msg = f"{where}: {head} cannot be searched: {FORBIDDEN[head]}"
        raise RaymmiError(msg)
    parent, _, last = head.rpartition(".")
    if head not in fields and parent in fields:
        msg = f"{where}: {parent}: unknown range {last!r}; use one of {list(KINDS)}"
        raise RaymmiError(msg)
    if head not in fields:
        options = list(fields)
        close = difflib.get_close_matches(head, options, n=3, cutoff=0.6)
        leaf = head.rpartition(".")[2]
        close += [k for k in options if k.rpartition(".")[2] == leaf and k not in close]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        sections = sorted({k.partition(".")[0] for k in options if "." in k})
        msg = (
            f"{where}: {key!r} is not a setting this model can search{hint} Keys are "
            f"{'/'.join(f'{s}.*' for s in sections)} (the model's Config and OptimConfig) or "
            f"{', '.join(TOP_LEVEL_TUNABLE)}"
        )
        raise RaymmiError(msg)
    hint = fields[head]
    if index is None:
        return hint
    element = _element_hint(hint)
    if element is None:
        msg = f"{where}: {key!r}: {head} is not a list setting, so it has no element {index}"
        raise RaymmiError(msg)
    return element


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _element_hint(hint: Any) -> Any:
    hint = _strip_optional(hint)
    if typing.get_origin(hint) in (tuple, list):
        args = typing.get_args(hint)
        return args[0] if args else Any
    return None


def _is_int(hint: Any) -> bool:
    return _strip_optional(hint) is int


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise RaymmiError(f"{what}={value!r} is not a number")
    if isinstance(value, str):  # YAML 1.1 reads 1e5 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise RaymmiError(f"{what}={value!r} is not a number") from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise RaymmiError(f"{what}={value!r} is not a finite number")
    return float(value)


def _dimension(key: str, spec: Mapping[str, Any], *, integer: bool, where: str) -> Dimension:
    what = f"{where}: {key}"
    if "type" in spec:
        kind = spec["type"]
        rest = {k: v for k, v in spec.items() if k != "type"}
        if kind in ("loguniform", "uniform"):
            if set(rest) != {"low", "high"}:
                msg = f"{what}: type {kind} takes low and high, got {sorted(rest)}"
                raise RaymmiError(msg)
            args: Any = [rest["low"], rest["high"]]
        elif kind in ("choice", "grid"):
            if set(rest) != {"values"}:
                msg = f"{what}: type {kind} takes values, got {sorted(rest)}"
                raise RaymmiError(msg)
            args = rest["values"]
        else:
            msg = f"{what}: unknown range type {kind!r}; use one of {list(KINDS)}"
            raise RaymmiError(msg)
    else:
        if len(spec) != 1:
            msg = f"{what}: give exactly one of {list(KINDS)}, got {sorted(spec)}"
            raise RaymmiError(msg)
        kind, args = next(iter(spec.items()))
    if kind in ("loguniform", "uniform"):
        if not isinstance(args, Sequence) or isinstance(args, str) or len(args) != 2:
            msg = f"{what}: {kind} takes [low, high], got {args!r}"
            raise RaymmiError(msg)
        low, high = (_number(v, f"{what} {kind} bound") for v in args)
        if kind == "loguniform" and low <= 0:
            msg = f"{what}: loguniform needs low > 0 (a log scale), got {low:g}"
            raise RaymmiError(msg)
        if integer and math.floor(high) < math.ceil(low):
            msg = f"{what}: empty range: no integer between {low:g} and {high:g}"
            raise RaymmiError(msg)
        if low >= high:
            msg = f"{what}: empty range: low {low:g} >= high {high:g}" + (
                "; for one value write the value itself" if low == high else ""
            )
            raise RaymmiError(msg)
        return Dimension(key, kind, low=low, high=high, integer=integer)
    if kind in ("choice", "grid"):
        if not isinstance(args, Sequence) or isinstance(args, str):
            msg = f"{what}: {kind} takes a list of values, got {args!r}"
            raise RaymmiError(msg)
        if len(args) == 0:
            msg = f"{what}: empty range: {kind} lists no value"
            raise RaymmiError(msg)
        values = tuple(_freeze(v) for v in args)
        seen = [v for i, v in enumerate(values) if v in values[:i]]
        if seen:
            msg = f"{what}: {kind} lists {seen[0]!r} twice"
            raise RaymmiError(msg)
        return Dimension(key, kind, values=values, integer=integer)
    msg = f"{what}: unknown range {kind!r}; use one of {list(KINDS)}"
    raise RaymmiError(msg)


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def thaw(value: Any) -> Any:
    """Tuples (frozen list values) back to lists, for YAML and the config tree."""
    return [thaw(v) for v in value] if isinstance(value, tuple) else value


def check_values(
    space: SearchSpace, model_config: type, *, base: Mapping[str, Any], where: str
) -> None:
    """Build the training config at every bound and choice: a bad value fails now, not later."""
    middle = {d.key: d.cast(d.low) if d.is_range else d.values[0] for d in space.dims}
    probes: list[tuple[str, dict[str, Any]]] = []
    for d in space.dims:
        options = [d.cast(d.low), d.cast(d.high)] if d.is_range else list(d.values)
        probes += [(f"{d.key}={v!r}", {**middle, d.key: v}) for v in options]
    for label, params in probes:
        tree = apply_params(base, {**space.fixed, **{k: thaw(v) for k, v in params.items()}})
        try:
            config = from_dict(TrainConfig, tree, where="train")
            from_dict(model_config, dict(config.model), where="model")
        except RaymmiError as err:
            msg = f"{where}: with {label} the training config is invalid: {err}"
            raise RaymmiError(msg) from None


# ----------------------------------------------------------------------------------------------
# search settings
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """``raymmi tune MODEL``: a hyperparameter search of Ray Train runs with Ray Tune.

    Parameters
    ----------
    space
        The search space YAML (see this module's docstring).
    out
        Output folder: ``search.json`` (settings, for ``--resume``), ``trials/<id>/`` (each
        trial's training output), ``tune/`` (Ray Tune's experiment state), ``trials.csv``,
        ``results.csv`` (one row per configuration) and ``best.yaml`` (written last).
    metric, mode
        What to optimize: a metric the training reports every epoch (``val_loss``,
        ``val_ari`` ...) and ``max`` or ``min``. With ``--label-key``, one-worker trials also
        report ``all_ari``, ``all_nmi`` and ``all_silhouette``: k-means of every cell's
        embedding (training and validation), steadier than ``val_*`` on small sets.
    trials
        Configurations to try (``--search grid``: the grid's size; may be left out).
    seeds
        Trainings per configuration (``optim.seed``, ``optim.seed+1`` ...); the results rank
        configurations by the mean over the seeds.
    search
        ``optuna`` (TPE; grid keys are categorical), ``random`` or ``grid`` (exhaustive).
    scheduler
        ``asha`` (asynchronous successive halving on ``epochs_done``) or ``none``.
    max_concurrent
        Trials running at once; ``None``: as many as the cluster can place.
    grace_period, reduction_factor
        ASHA: epochs every trial gets before it can be stopped, and the halving rate.
    name
        Name of the search (MLflow parent run, Ray Tune experiment).
    seed
        Seed of the sampler (Optuna TPE, random search).
    trial_embeddings
        Every trial also embeds all cells and writes ``trials/<id>/embeddings`` with its
        full-data scores. Off by default: trials are ranked on the per-epoch metrics, and the
        embedding pass is fixed cost that early stopping cannot save.
    cpus_per_trial, gpus_per_trial
        Resources of one in-process trial (one worker): CPUs (default 1; also its torch
        threads, rounded down) and GPUs (fractional: 0.25 lets four trials share one GPU).
    pack
        Configurations trained together as one stacked model (``--pack K``; 1: none).
    ray_train
        Run one-worker trials as Ray Train runs too (the path of ``--workers N > 1``): for
        comparisons (``jobs/bench_tune.py``), not needed otherwise.
    """

    space: str
    out: str
    metric: str
    mode: Literal["max", "min"]
    trials: int | None = None
    seeds: int = 1
    search: Literal["optuna", "random", "grid"] = "optuna"
    scheduler: Literal["asha", "none"] = "asha"
    max_concurrent: int | None = None
    grace_period: int = 1
    reduction_factor: int = 3
    name: str | None = None
    seed: int = 0
    trial_embeddings: bool = False
    cpus_per_trial: float | None = None
    gpus_per_trial: float = 0.0
    pack: int = 1
    ray_train: bool = False  # every trial a Ray Train run, as before in-process trials

    def __post_init__(self) -> None:
        from raymmi.config import check_choice, check_positive

        if self.cpus_per_trial is not None and not (
            math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0
        ):
            msg = f"--cpus-per-trial {self.cpus_per_trial!r} must be a number > 0"
            raise RaymmiError(msg)
        if not (math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0):
            msg = f"--gpus-per-trial {self.gpus_per_trial!r} must be a number >= 0"
            raise RaymmiError(msg)
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            msg = (
                f"--gpus-per-trial {self.gpus_per_trial:g}: above 1 a trial takes whole GPUs "
                f"(use {math.ceil(self.gpus_per_trial)} or a fraction <= 1)"
            )
            raise RaymmiError(msg)
        check_positive("--pack", self.pack)

        check_choice("--mode", self.mode, ("max", "min"))
        check_choice("--search", self.search, SEARCHES)
        check_choice("--scheduler", self.scheduler, SCHEDULERS)
        check_positive("--seeds", self.seeds)
        check_positive("--grace-period", self.grace_period)
        if self.reduction_factor < 2:
            msg = f"--reduction-factor {self.reduction_factor} must be >= 2"
            raise RaymmiError(msg)
        if self.trials is not None:
            check_positive("--trials", self.trials)
        elif self.search != "grid":
            msg = f"--search {self.search} needs --trials N (configurations to try)"
            raise RaymmiError(msg)
        if self.max_concurrent is not None:
            check_positive("--max-concurrent", self.max_concurrent)
