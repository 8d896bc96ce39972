"""The ``raymmi`` command line: ``raymmi <stage> [...] [--config file.yaml] [--set key=value]``.

Known errors (bad input, bad configuration) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from raymmi.schema import RaymmiError
from raymmi.stages import GROUPS, STAGES, FieldFlag, Stage, ray_config, tracking_config


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--config", help="YAML file with this stage's settings")
    group.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting"
    )
    group.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    group.add_argument("--num-cpus", type=int, help="CPUs of the local Ray")
    group.add_argument("--object-store-mb", type=int, help="object store of the local Ray (MiB)")
    group.add_argument(
        "--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    group.add_argument("--experiment", default="raymmi", help="MLflow experiment name")
    group.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    group.add_argument("--overwrite", action="store_true", default=None, help="replace --out")
    group.add_argument(
        "--verbose", action="store_true", help="also print Ray's own logs (Ray Data, Ray Train)"
    )


class _Parser(argparse.ArgumentParser):
    """argparse that answers a mistyped command, choice or option with "did you mean"."""

    # a stage's arguments are added on first use: building them imports its settings dataclass
    _stage: Stage | None = None

    def _populate(self) -> None:
        stage, self._stage = self._stage, None
        if stage is not None:
            _stage_arguments(self, stage)
            self.set_defaults(_stage=stage.name)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        self._populate()
        parsed, extras = super().parse_known_args(args, namespace)
        if not hasattr(parsed, "_parser"):  # the deepest subcommand's parser names itself first
            parsed._parser = self
        return parsed, extras

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        parsed, extras = self.parse_known_args(args, namespace)
        owner = parsed.__dict__.pop("_parser", self)
        if extras:
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def error(self, message: str):  # type: ignore[override]
        super().error(message + _did_you_mean(message, self))

    def format_help(self) -> str:
        self._populate()
        _annotate(self)
        return super().format_help()


EXAMPLES: dict[str, str] = {
    **{name: stage.example for name, stage in STAGES.items() if stage.example},
    "inspect": "raymmi inspect plates --verify",
    "demo": "raymmi demo --small",
}


def _command(parser: argparse.ArgumentParser) -> str:
    return parser.prog.removeprefix("raymmi").strip()


def _annotate(parser: argparse.ArgumentParser) -> None:
    """The example and the registered models into ``--help`` (imported only to print it)."""
    if getattr(parser, "_annotated", False):
        return
    parser._annotated = True  # type: ignore[attr-defined]
    command = _command(parser)
    if command in EXAMPLES and not parser.epilog:
        parser.epilog = "example:\n  " + EXAMPLES[command]
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if action.help and "{MODELS}" in action.help:
            from raymmi.models import model_names

            action.help = action.help.replace("{MODELS}", ", ".join(model_names()))


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value).replace("%", "%%")


def _did_you_mean(message: str, parser: argparse.ArgumentParser) -> str:
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        typed, options = choice[1], re.findall(r"'([^']*)'", choice[2])
    elif message.startswith("unrecognized arguments: "):
        flags = [a for a in message.split()[2:] if a.startswith("-")]
        if not flags:
            return ""
        typed = flags[0].split("=")[0]
        options = [o for a in parser._actions for o in a.option_strings]
    else:
        return ""
    close = difflib.get_close_matches(typed, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every stage (:data:`raymmi.stages.STAGES`) and of demo, inspect."""
    from raymmi import __version__

    parser = _Parser(
        prog="raymmi",
        description="Cell Painting plates and multimodal single cells, distributed on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"raymmi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline on generated and real data")
    demo.add_argument("--out", default="raymmi-demo", help="folder for every output")
    demo.add_argument("--small", action="store_true", help="tiny sizes (tests, smoke runs)")
    _common(demo)

    groups: dict[str, Any] = {}
    for name, stage in STAGES.items():
        first, _, second = name.partition(" ")
        if second and first not in groups:
            group = sub.add_parser(first, help=GROUPS[first])
            groups[first] = group.add_subparsers(dest="kind", required=True)
        where = groups[first] if second else sub
        stage_parser = where.add_parser(
            second or first, help=stage.help, description=stage.description or None
        )
        stage_parser._stage = stage

    inspect = sub.add_parser("inspect", help="print a shard set's manifest summary")
    inspect.add_argument("source", help="shard set directory")
    inspect.add_argument("--verify", action="store_true", help="re-hash every file")
    return parser


def _stage_arguments(parser: argparse.ArgumentParser, stage: Stage) -> None:
    """One argument per settings field (positional ones first), the extras, the runtime."""
    flags = list(stage.fields())
    for extra in stage.extras:
        if not extra.names[0].startswith("-"):
            parser.add_argument(*extra.names, **extra.kwargs)
    for flag in flags:
        if flag.option is None:
            parser.add_argument(flag.dest, metavar=flag.shown, help=_help(flag), **flag.kwargs)
    sections: dict[str, Any] = {}
    for flag in flags:
        if flag.option is None:
            continue
        target: Any = parser
        if flag.section:
            if flag.section not in sections:
                sections[flag.section] = parser.add_argument_group(
                    f"{flag.section} (--set {flag.section}.KEY=VALUE)"
                )
            target = sections[flag.section]
        names = [f"--{flag.option}"]
        own = flag.field.name.replace("_", "-")
        if own != flag.option and not flag.option.startswith("no-"):
            names.append(f"--{own}")
        target.add_argument(*names, dest=flag.dest, help=_help(flag), **flag.kwargs)
    for extra in stage.extras:
        if extra.names[0].startswith("-"):
            parser.add_argument(*extra.names, **extra.kwargs)
    _common(parser)


def _help(flag: FieldFlag) -> str:
    """The field's text, then its default, or that it is required (here or in --config)."""
    text = flag.doc
    if flag.required:
        return f"{text} (required: here or in --config)".lstrip()
    default = flag.field.default
    if flag.option is not None and flag.option.startswith("no-"):
        return f"do not: {text}" if text else ""
    if default is dataclasses.MISSING or default in (None, (), False):
        return text
    return f"{text} (default: {_shown(default)})".lstrip()


def _inspect(args: argparse.Namespace) -> int:
    from raymmi.io import open_shard_set

    shard_set = open_shard_set(args.source)
    m = shard_set.manifest
    print(f"{args.source}: {m.kind} shard set, schema v{m.schema_version}")
    print(f"  rows {m.num_rows}, files {len(m.files)}")
    if m.kind == "plates":
        print(f"  plates {len(m.plates)}, features {len(m.features)}, metadata {list(m.metadata)}")
    for mod in m.modalities:
        print(f"  modality {mod.name}: {mod.encoding}, {len(mod.features)} features")
    print(
        f"  produced by: {m.producer.get('command')} "
        f"(MLflow run {m.producer.get('mlflow_run_id')})"
    )
    for parent in m.parents:
        print(f"  parent: {parent.get('uri')}")
    if args.verify:
        problems = shard_set.verify()
        for p in problems:
            print(f"  DAMAGED {p}")
        if problems:
            return 1
        print("  every checksum matches the manifest")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from raymmi.demo import run_demo

    run_demo(
        out=args.out,
        small=args.small,
        ray_config=ray_config(args),
        tracking=tracking_config(args),
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"demo": _demo, "inspect": _inspect}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``raymmi`` command; return its exit code."""
    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", False):
        from raymmi.run import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
    try:
        stage = getattr(args, "_stage", None)
        if stage is None:
            return COMMANDS[args.command](args)
        return STAGES[stage].run(STAGES[stage].settings(args), args)
    except RaymmiError as err:
        print(f"raymmi: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raymmi: interrupted", file=sys.stderr)
        return 130


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    return text if os.environ.get("RAYMMI_DEBUG") is None else repr(err)


if __name__ == "__main__":
    sys.exit(main())
