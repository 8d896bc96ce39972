"""The stage registry: the one list the CLI, the jobs and the README follow (no Ray)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from raymmi.cli import COMMANDS, build_parser
from raymmi.schema import RaymmiError
from raymmi.stages import STAGES, field_docs

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _parse(argv: list[str]):
    args = build_parser().parse_args(argv)
    stage = STAGES[args._stage]
    return stage.settings(args)


def test_readme_command_table_lists_every_stage_and_nothing_else():
    listed = set()
    for row in re.findall(r"^\| `raymmi ([^`]*)` \|", _section("Commands"), flags=re.M):
        words = row.split()
        if words[0] in STAGES or words[0] in COMMANDS:
            listed.add(words[0])
            continue
        for second in words[1].split("\\|"):
            listed.add(f"{words[0]} {second}")
    assert listed == set(STAGES) | set(COMMANDS)


def test_readme_code_map_names_the_registry_and_every_settings_module():
    code_map = _section("Code map")
    assert "raymmi/stages/" in code_map and "jobs/stage.py NAME" in code_map
    for name, stage in STAGES.items():
        modules = [
            stage.config_type.split(":")[0],
            *(w.split(":")[0] for w in stage.sections.values()),
        ]
        for module in modules:
            parts = module.split(".")
            paths = {
                "/".join(parts[:n]) + suffix
                for n in range(2, len(parts) + 1)
                for suffix in ("/", ".py")
            }
            assert any(p in code_map for p in paths), (name, module)


def test_every_stage_answers_help_and_every_scalar_setting_has_a_flag(capsys):
    for name, stage in STAGES.items():
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args([*name.split(), "--help"])
        assert info.value.code == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "--config CONFIG" in out and "--set KEY=VALUE" in out, name
        for flag in stage.fields():
            shown = flag.shown if flag.option is None else f"--{flag.option}"
            assert shown in out, (name, shown)


def test_every_stage_takes_config_and_set_alike(tmp_path):
    """The same settings from --config, from --set and from flags give the same config."""
    config = tmp_path / "normalize.yaml"
    config.write_text(yaml.safe_dump({"source": "IN", "out": "OUT", "method": "mean"}))
    from_file = _parse(["normalize", "--config", str(config)])
    from_set = _parse(
        ["normalize", "--set", "source=IN", "--set", "out=OUT", "--set", "method=mean"]
    )
    from_flags = _parse(["normalize", "IN", "--out", "OUT", "--method", "mean"])
    assert from_file == from_set == from_flags
    # flags win over the file, --set over both
    both = _parse(
        ["normalize", "--config", str(config), "--method", "combat", "--set", "epsilon=0.5"]
    )
    assert (both.method, both.epsilon, both.out) == ("combat", 0.5, "OUT")


def test_tune_search_settings_from_config_set_and_flags(tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text(
        yaml.safe_dump(
            {"optim": {"epochs": 2}, "tune": {"space": "space.yaml", "metric": "val_loss"}}
        )
    )
    search, base = _parse(
        [
            *("tune", "sailerx", "--data", "D", "--out", "O", "--config", str(config)),
            *("--mode", "min", "--set", "tune.trials=8", "--search-seed", "3", "--epochs", "4"),
        ]
    )
    assert (search.space, search.metric, search.mode) == ("space.yaml", "val_loss", "min")
    assert (search.trials, search.seed, search.out) == (8, 3, "O")
    assert (base.model_name, base.data, base.optim.epochs) == ("sailerx", "D", 4)
    with pytest.raises(RaymmiError, match=r"tune\.tune: missing required key\(s\) \['mode'\]"):
        _parse(["tune", "sailerx", "--data", "D", "--out", "O", "--config", str(config)])


def test_flags_keep_their_names_and_literal_choices():
    generate = _parse(["generate", "plates", "--out", "O", "--plates", "3", "--n-features", "7"])
    assert (generate.n_plates, generate.n_features) == (3, 7)
    task = _parse(
        [
            "task",
            "predict",
            "--data",
            "D",
            "--out",
            "O",
            "--train-batches",
            "a,b",
            "--test-batches",
            "c",
        ]
    )
    assert (task.train_batches, task.test_batches) == (("a", "b"), ("c",))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["normalize", "IN", "--out", "O", "--method", "zscore"])
    cells = _parse(["ingest", "cells", "--rna", "r.h5ad", "--out", "O", "--no-check-counts"])
    assert cells.check_counts is False


def test_field_docs_reads_the_parameters_section():
    @dataclasses.dataclass
    class Example:
        """Doc.

        Parameters
        ----------
        a, b
            Both of ``a`` and :class:`B`.
        c
            RNA depth.
        """

        a: int
        b: int
        c: int

    assert field_docs(Example) == {
        "a": "both of a and B",
        "b": "both of a and B",
        "c": "RNA depth",
    }
