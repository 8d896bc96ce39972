"""A stage: its settings dataclass, the flags made from its fields, and its run function."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from raymmi.config import (
    RayConfig,
    TrackingConfig,
    apply_overrides,
    from_dict,
    load_yaml,
)


@dataclasses.dataclass(frozen=True)
class Extra:
    """A flag that is not a settings field (a run argument or a shortcut): argparse's args."""

    names: tuple[str, ...]
    kwargs: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One ``raymmi`` stage.

    Parameters
    ----------
    name
        The command words (``"ingest plates"``).
    config_type
        ``"module:Class"`` of the settings dataclass (imported on first use).
    run
        ``run(config, args) -> exit code``: calls the stage's driver and prints its summary.
    help
        One line for ``raymmi --help``.
    positional
        ``(field, shown name)`` of fields given positionally (a tuple field takes any number).
    flags
        Field → flag name where the flag is not the field's name (``n_plates``: ``plates``);
        the field's own name is accepted too.
    hidden
        Fields settable only through ``--config``/``--set`` (testing hooks).
    required_positional
        Positional fields that must be given on the command line (no ``--config`` fallback).
    sections
        Section name → ``"module:Class"`` of a further settings dataclass whose fields get
        flags too and live under that key in ``--config``/``--set`` (``tune.trials``).
    extras
        Flags that are no settings field (``--resume``, the ``--epochs`` shortcut).
    prepare
        ``prepare(args, data)``: turns the extras into settings before ``--set`` applies.
    build
        ``build(data, where) -> config``: default ``from_dict(config_type, data)``.
    help_text
        Field → help where the docstring's wording does not fit a flag.
    example, description
        Shown in ``raymmi <stage> --help``.
    """

    name: str
    config_type: str
    run: Callable[[Any, argparse.Namespace], int]
    help: str
    positional: tuple[tuple[str, str], ...] = ()
    flags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    hidden: tuple[str, ...] = ()
    required_positional: tuple[str, ...] = ()
    sections: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extras: tuple[Extra, ...] = ()
    prepare: Callable[[argparse.Namespace, dict[str, Any]], None] | None = None
    build: Callable[[dict[str, Any], str], Any] | None = None
    help_text: Mapping[str, str] = dataclasses.field(default_factory=dict)
    example: str = ""
    description: str = ""

    def settings_type(self) -> type:
        """The settings dataclass."""
        return _load(self.config_type)

    def fields(self) -> Iterator[FieldFlag]:
        """Every settings field with a flag, sections included."""
        yield from _field_flags(self, self.settings_type(), section="")
        for section, where in self.sections.items():
            yield from _field_flags(self, _load(where), section=section)

    def settings(self, args: argparse.Namespace) -> Any:
        """The settings of one command line: ``--config``, then flags, then ``--set``."""
        data: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
        for flag in self.fields():
            value = getattr(args, flag.dest, None)
            if value is None or value == []:
                continue
            node = data.setdefault(flag.section, {}) if flag.section else data
            node[flag.field.name] = value
        if getattr(args, "overwrite", None) and _has_field(self.settings_type(), "overwrite"):
            data["overwrite"] = True
        if self.prepare is not None:
            self.prepare(args, data)
        data = apply_overrides(data, getattr(args, "set", []))
        if self.build is not None:
            return self.build(data, self.name)
        return from_dict(self.settings_type(), data, where=self.name)


@dataclasses.dataclass(frozen=True)
class FieldFlag:
    """A settings field as a command-line flag (or positional argument)."""

    field: dataclasses.Field[Any]
    hint: Any
    section: str
    option: str | None  # ``None``: positional
    shown: str
    kwargs: Mapping[str, Any]
    doc: str

    @property
    def dest(self) -> str:
        return f"{self.section}.{self.field.name}" if self.section else self.field.name

    @property
    def required(self) -> bool:
        return (
            self.field.default is dataclasses.MISSING
            and self.field.default_factory is dataclasses.MISSING
        )


def _load(where: str) -> type:
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _has_field(cls: type, name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(cls))


def _field_flags(stage: Stage, cls: type, *, section: str) -> Iterator[FieldFlag]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    positional = dict(stage.positional)
    skip = {"overwrite", *stage.hidden} | ({"out"} if section else set())
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kwargs = _argparse_kwargs(hints[field.name], field)
        if kwargs is None:
            continue
        doc = stage.help_text.get(field.name, docs.get(field.name, ""))
        if field.name in positional and not section:
            if "nargs" in kwargs:
                kwargs = {"nargs": "*", "type": str}
            elif field.name not in stage.required_positional:
                kwargs = {**kwargs, "nargs": "?"}
            shown = positional[field.name]
            yield FieldFlag(field, hints[field.name], section, None, shown, kwargs, doc)
            continue
        option = stage.flags.get(field.name, field.name).replace("_", "-")
        if kwargs.pop("no", False):
            option = f"no-{option}"
        if "action" not in kwargs and "choices" not in kwargs:
            kwargs.setdefault("metavar", option.replace("-", "_").upper())
        yield FieldFlag(field, hints[field.name], section, option, option, kwargs, doc)


def _argparse_kwargs(hint: Any, field: dataclasses.Field[Any]) -> dict[str, Any] | None:
    """The argparse arguments of a field's type; ``None``: no flag (sections, mappings)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            return None
        hint, origin, args = inner[0], typing.get_origin(inner[0]), typing.get_args(inner[0])
    if origin is typing.Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin is tuple:
        return {"type": _comma_list, "nargs": None, "metavar": "A,B"}
    if hint is bool:
        if field.default is True:
            return {"action": "store_false", "default": None, "no": True}
        return {"action": "store_true", "default": None}
    if hint in (str, int, float):
        return {"type": hint}
    return None


def _comma_list(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def field_docs(cls: type) -> dict[str, str]:
    """Field name → its text in the numpy-style ``Parameters`` section of ``cls``'s docstring.

    ``a, b`` entries give both fields the same text; reST markup (````x````, ``:class:`X```)
    is dropped and the first letter lowercased, as argparse help reads.
    """
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    docs: dict[str, str] = {}
    names: list[str] = []
    inside = False
    for line in lines:
        stripped = line.strip()
        if stripped == "Parameters":
            inside = True
            continue
        if not inside or set(stripped) == {"-"}:
            continue
        indent = len(line) - len(line.lstrip())
        if stripped and indent == 0 and not re.fullmatch(r"[a-z_0-9, ]+", stripped):
            break
        if stripped and indent == 0:
            names = [n.strip() for n in stripped.split(",")]
            continue
        for name in names:
            docs[name] = f"{docs.get(name, '')} {stripped}".strip()
    return {name: _plain_text(text) for name, text in docs.items()}


_PROPER = {"Ray", "Adam", "Optuna", "ComBat", "Metadata", "SAILERX", "UMINT"}


def _plain_text(text: str) -> str:
    text = re.sub(r":[a-z]+:`~?([^`]*)`", r"\1", text).replace("``", "")
    first = text.split(" ", 1)[0]
    if first[:1].isupper() and first[1:].islower() and first not in _PROPER:
        text = text[0].lower() + text[1:]
    return text.removesuffix(".").replace("%", "%%")


def ray_config(args: argparse.Namespace) -> RayConfig:
    """The Ray settings of a command line (``--address``, ``--num-cpus``, ...)."""
    return RayConfig(
        address=args.address, num_cpus=args.num_cpus, object_store_mb=args.object_store_mb
    )


def tracking_config(args: argparse.Namespace) -> TrackingConfig:
    """The MLflow settings of a command line (``--tracking-uri``, ``--no-track`` ...)."""
    return TrackingConfig(
        uri=args.tracking_uri, experiment=args.experiment, enabled=not args.no_track
    )
