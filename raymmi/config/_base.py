"""Loading and checking of the settings dataclasses: from_dict, to_dict, YAML, ``--set``."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from raymmi.schema import RaymmiError

T = TypeVar("T")


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
