from __future__ import annotations

import pytest

from raymmi.config import (
    IngestCellsConfig,
    IngestPlatesConfig,
    apply_overrides,
    flatten,
    from_dict,
    load_yaml,
    to_dict,
)
from raymmi.schema import RaymmiError


def test_from_dict_builds_and_round_trips():
    cfg = from_dict(IngestPlatesConfig, {"sources": "a.csv", "out": "o", "on_nan": "keep"})
    assert cfg.sources == ("a.csv",)
    assert from_dict(IngestPlatesConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sources": ["a"], "out": "o", "nope": 1}, r"unknown key\(s\) \['nope'\]; allowed"),
        ({"sources": ["a"]}, r"missing required key\(s\) \['out'\]"),
        ({"sources": ["a"], "out": "o", "on_nan": "zero"}, "on_nan='zero' is not one of"),
        ({"sources": ["a"], "out": "o", "batch_rows": "many"}, "batch_rows='many' should be"),
        ({"sources": ["a"], "out": "o", "batch_rows": 0}, "batch_rows=0 must be > 0"),
        ({"sources": [], "out": "o"}, "at least one source"),
    ],
)
def test_from_dict_errors_name_the_key(data, message):
    with pytest.raises(RaymmiError, match=message):
        from_dict(IngestPlatesConfig, data, where="ingest plates")


def test_cells_config_refuses_two_partners():
    with pytest.raises(RaymmiError, match="at most one of --atac and --adt"):
        IngestCellsConfig(rna="r", out="o", atac="a", adt="b")


def test_overrides_and_flatten():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, 2]", "d=x"])
    assert data == {"a": {"b": 2, "c": [1, 2]}, "d": "x"}
    assert flatten(data) == {"a.b": 2, "a.c": [1, 2], "d": "x"}
    with pytest.raises(RaymmiError, match="not of the form key=value"):
        apply_overrides({}, ["novalue"])


def test_load_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(RaymmiError, match="not valid YAML"):
        load_yaml(bad)
    with pytest.raises(RaymmiError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(RaymmiError, match="must hold a mapping"):
        load_yaml(listy)


@pytest.mark.parametrize("spelling", ["1e-3", "1E-3", "0.001", "1e-03", ".001", "1_0e-4"])
def test_set_accepts_every_float_spelling(spelling):
    """YAML 1.1 reads ``1e-3`` as a string; a float field takes what Python's float takes."""
    from raymmi.config import TrainConfig

    data = apply_overrides({"model_name": "ae", "data": "d", "out": "o"}, [f"optim.lr={spelling}"])
    assert from_dict(TrainConfig, data).optim.lr == pytest.approx(float(spelling))
    with pytest.raises(RaymmiError, match="should be of type float"):
        from_dict(TrainConfig, {**data, "optim": {"lr": "fast"}})
