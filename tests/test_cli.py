"""The command line itself: version, "did you mean", every stage answering --help (no Ray)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raymmi import __version__
from raymmi.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


def _exit(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def test_version(capsys):
    code, out, _ = _exit(["--version"], capsys)
    assert code == 0 and out.strip() == f"raymmi {__version__}"


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["normalise"], "did you mean 'normalize'?"),
        (["ingest", "plate"], "did you mean 'plates'?"),
        (["normalize", "IN", "--out", "O", "--methd", "mean"], "did you mean '--method'?"),
        (["evaluate", "plates", "A", "--out", "R", "--smaple", "9"], "did you mean '--sample'?"),
    ],
)
def test_did_you_mean(argv, suggestion, capsys):
    code, _, err = _exit(argv, capsys)
    assert code == 2 and suggestion in err
    # an unknown option is reported under its own command's usage, not the top level's
    if argv[0] in ("normalize", "evaluate"):
        assert f"usage: raymmi {argv[0]}" in err


def test_every_readme_command_answers_help(capsys):
    """A stage the README names exists on the CLI (``raymmi X --help`` exits 0)."""
    commands = set(re.findall(r"`raymmi ([a-z]+)", README.read_text())) | {"evaluate"}
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert commands <= set(choices), commands - set(choices)
    for command in sorted(commands):
        code, out, _ = _exit([command, "--help"], capsys)
        assert code == 0 and "usage: raymmi" in out


def test_help_shows_defaults_required_settings_and_examples(capsys):
    _, out, _ = _exit(["normalize", "--help"], capsys)
    flat = " ".join(out.split())
    assert "(default: standardize)" in flat and "(default: negcon)" in flat
    assert "--out OUT output shard set (required: here or in --config)" in flat
    assert "example: raymmi normalize" in flat
    _, out, _ = _exit(["generate", "plates", "--help"], capsys)
    assert "(default:" in out


def test_train_help_lists_every_registered_model(capsys):
    from raymmi.models import model_names

    for command in ("train", "tune"):
        _, out, _ = _exit([command, "--help"], capsys)
        flat = " ".join(out.split())
        assert all(name in flat for name in model_names()), command
