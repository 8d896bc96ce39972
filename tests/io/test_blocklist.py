"""Blocklist files: text and YAML forms, pycytominer's default, clear errors."""

from __future__ import annotations

import importlib.util

import pytest

from raymmi.io import read_blocklist
from raymmi.schema import RaymmiError


def test_text_file_skips_header_comments_and_blanks(tmp_path):
    path = tmp_path / "block.txt"
    path.write_text("blocklist\n# noisy\nCells_A\n\n  Nuclei_B  \nCells_A\n")
    names, source = read_blocklist(str(path))
    assert names == ("Cells_A", "Nuclei_B")
    assert str(path) in source


def test_yaml_list_and_registry(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- Cells_A\n- Cells_B\n")
    assert read_blocklist(str(listed))[0] == ("Cells_A", "Cells_B")
    registry = tmp_path / "registry.yml"
    registry.write_text("default:\n  - Cells_C\nother:\n  - Cells_D\n")
    assert read_blocklist(str(registry))[0] == ("Cells_C",)
    registry.write_text("other:\n  - Cells_D\n")
    with pytest.raises(RaymmiError, match=r"no 'default' list"):
        read_blocklist(str(registry))


def test_missing_file_names_the_flag(tmp_path):
    with pytest.raises(RaymmiError, match=r"--blocklist '.*nope.txt' cannot be read"):
        read_blocklist(str(tmp_path / "nope.txt"))


def test_default_is_pycytominers_packaged_list():
    pycytominer = pytest.importorskip("pycytominer")
    names, source = read_blocklist(None)
    assert "pycytominer" in source
    expected = pycytominer.cyto_utils.get_blocklist_features()
    assert list(names) == list(dict.fromkeys(expected))
    assert len(names) > 40


def test_without_pycytominer_asks_for_a_file(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pycytominer" else real(name, *a),
    )
    with pytest.raises(RaymmiError, match=r"pass --blocklist FILE"):
        read_blocklist(None)
