"""`select_features` through Ray: the same report and columns as the pure selection."""

from __future__ import annotations

import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest

from raymmi import testing
from raymmi.config import IngestPlatesConfig, TrackingConfig
from raymmi.io import open_shard_set, read_blocklist
from raymmi.plates import (
    DEFAULT_OPS,
    OPS,
    PYCYTOMINER_OPS,
    REPORT_NAME,
    SelectConfig,
    Thresholds,
    feature_selection,
)
from raymmi.run import generate_plates, ingest_plates, select_features
from raymmi.run._select import _driver as run_select
from raymmi.schema import RaymmiError

pytestmark = pytest.mark.usefixtures("ray_session")

OFF = TrackingConfig(enabled=False)
SPEC = testing.PlateSetSpec(
    n_plates=4, wells_per_plate=96, n_features=60, negcon_wells_per_plate=8, seed=2
)
LINCS = "cellpainting/lincs_SQ00015054_normalized_feature_select.csv.gz"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("select") / "generated")
    generate_plates(SPEC, out=out, tracking=OFF)
    return out


@pytest.fixture(scope="module")
def with_nan(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Generated plates with NaN planted (0-12% per feature), ingested with --on-nan keep."""
    root = tmp_path_factory.mktemp("select_nan")
    frame = testing.generate_plates(SPEC)
    features = testing.feature_names(SPEC)
    rng = np.random.default_rng(4)
    for j, name in enumerate(features[::3]):
        frame.loc[rng.random(len(frame)) < 0.02 * (j % 7), name] = np.nan
    frame.to_parquet(root / "nan.parquet")
    out = str(root / "set")
    ingest_plates(
        IngestPlatesConfig(sources=(str(root / "nan.parquet"),), out=out, on_nan="keep"),
        tracking=OFF,
    )
    return out


def _pure(source: str, config: SelectConfig, blocklist: str | None = None) -> pd.DataFrame:
    shard_set = open_shard_set(source)
    frame = shard_set.read_table().to_pandas()
    names, where = read_blocklist(blocklist) if "blocklist" in config.ops else ((), "")
    return feature_selection(
        frame,
        features=list(shard_set.manifest.features),
        ops=config.ops,
        thresholds=config.thresholds,
        samples=config.samples,
        blocklist=names,
        blocklist_source=where,
    )


def _check_output(config: SelectConfig, expected: pd.DataFrame) -> None:
    source, out = open_shard_set(config.source), open_shard_set(config.out)
    report = pd.read_csv(f"{config.out}/{REPORT_NAME}", keep_default_na=False)
    report["kept"] = report["kept"].astype(bool)
    pd.testing.assert_frame_equal(report, expected, check_dtype=False)
    kept = expected.loc[expected["kept"], "feature"].tolist()
    assert list(out.manifest.features) == kept
    assert out.manifest.metadata == source.manifest.metadata
    assert [(f.path, f.plate, f.rows) for f in out.manifest.files] == [
        (f.path, f.plate, f.rows) for f in source.manifest.files
    ]
    assert out.manifest.parents[0]["manifest_sha256"] == source.parent_ref()["manifest_sha256"]
    assert out.manifest.producer["command"] == "select"
    assert out.verify() == []
    written = out.read_table()
    assert written.column_names == [*source.manifest.metadata, *kept]
    assert written.schema.equals(source.read_table().select(written.column_names).schema)
    pd.testing.assert_frame_equal(  # NaN == NaN here, unlike pyarrow's Table.equals
        written.to_pandas(), source.read_table().select(written.column_names).to_pandas()
    )
    summary = out.manifest.extra["feature_selection"]
    assert summary["features_kept"] == len(kept)
    assert sum(summary["dropped_per_op"].values()) == len(expected) - len(kept)


@pytest.mark.parametrize("fixture", ["generated", "with_nan"])
def test_select_matches_the_pure_selection(request, tmp_path, fixture):
    source = request.getfixturevalue(fixture)
    blocklist = tmp_path / "block.txt"
    names = testing.feature_names(SPEC)
    blocklist.write_text(f"blocklist\n{names[1]}\n{names[40]}\nCells_Not_Here\n")
    config = SelectConfig(
        source=source,
        out=str(tmp_path / "out"),
        ops=OPS,
        blocklist=str(blocklist),
        corr_threshold=0.7,
    )
    manifest = select_features(config, tracking=OFF)
    expected = _pure(source, config, str(blocklist))
    _check_output(config, expected)
    dropped = manifest.extra["feature_selection"]["dropped_per_op"]
    assert not set(manifest.features) & {names[1], names[40]}
    assert dropped["blocklist"] >= 1
    bites = {"variance", "frequency", "correlation"} | ({"na"} if fixture == "with_nan" else set())
    assert all(dropped[op] > 0 for op in bites), dropped  # not vacuous


def test_select_matches_pycytominer_on_lincs(tmp_path):
    pycytominer = pytest.importorskip("pycytominer")
    if not testing.has_shared_data(LINCS):
        pytest.skip(f"real data ../shared/data/{LINCS} is not here")
    src = str(testing.shared_data(LINCS))
    ingest_plates(IngestPlatesConfig(sources=(src,), out=str(tmp_path / "lincs")), tracking=OFF)
    thresholds = {"corr_threshold": 0.8, "outlier_cutoff": 15.0, "min_variance": 1.0}
    config = SelectConfig(source=str(tmp_path / "lincs"), out=str(tmp_path / "out"), **thresholds)
    manifest = select_features(config, tracking=OFF)
    frame = open_shard_set(config.source).read_table().to_pandas()
    features = list(open_shard_set(config.source).manifest.features)
    long_names = {short: long for long, short in PYCYTOMINER_OPS.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pycytominer.feature_select(
            frame,
            features=features,
            operation=[long_names[op] for op in DEFAULT_OPS],
            **thresholds,
        )
    assert list(manifest.features) == [f for f in features if f in expected.columns]
    assert 100 < len(manifest.features) < 300


def test_samples_query_and_value_buckets(generated, tmp_path, monkeypatch):
    """Statistics on the negcon rows only; frequency counted in 3 chunks x 3 value buckets."""
    p = len(testing.feature_names(SPEC))
    monkeypatch.setattr(
        run_select, "_frequency_plan", lambda *args: ([(0, 7), (7, 31), (31, p)], 3)
    )
    config = SelectConfig(
        source=generated,
        out=str(tmp_path / "out"),
        ops=("frequency", "variance", "correlation"),
        samples="Metadata_is_negcon",
        corr_threshold=0.8,
    )
    select_features(config, tracking=OFF)
    expected = _pure(generated, config)
    _check_output(config, expected)
    everything = _pure(generated, SelectConfig(source=generated, out="-", ops=config.ops))
    assert not expected["kept"].equals(everything["kept"])


def test_frequency_plan_bounds_task_memory():
    chunks, buckets = run_select._frequency_plan(1000, 10_000, 1, 4)
    assert buckets == 1 and chunks[0] == (0, 8) and chunks[-1][1] == 1000  # 1 MiB / 120 kB
    chunks, buckets = run_select._frequency_plan(1000, 10**8, 512, 4)
    assert buckets == 3 and len(chunks) == 1000  # 1.2 GB of one feature over 512 MiB
    chunks, buckets = run_select._frequency_plan(10, 100, 512, 4)
    assert buckets == 1 and chunks == [(0, 3), (3, 6), (6, 9), (9, 10)]  # spread over CPUs


def test_report_and_metrics_reach_mlflow(generated, tmp_path):
    config = SelectConfig(
        source=generated, out=str(tmp_path / "out"), ops=("variance", "outliers")
    )
    manifest = select_features(config)
    run_id = manifest.producer["mlflow_run_id"]
    client = mlflow.tracking.MlflowClient()
    assert [a.path for a in client.list_artifacts(run_id, "select")] == [
        "select/feature_selection.csv"
    ]
    logged = pd.read_csv(client.download_artifacts(run_id, "select/feature_selection.csv"))
    assert (
        logged["feature"].tolist()
        == pd.read_csv(f"{config.out}/{REPORT_NAME}")["feature"].tolist()
    )
    metrics = client.get_run(run_id).data.metrics
    assert metrics["features_kept"] == len(manifest.features)
    assert metrics["features_in"] == SPEC.n_features
    assert metrics["dropped_variance"] + metrics["dropped_outliers"] == metrics["features_dropped"]


def _leftovers(root) -> list[str]:
    return sorted(p.name for p in root.iterdir())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"blocklist": "MISSING"}, r"--blocklist '.*MISSING' cannot be read"),
        ({"outlier_cutoff": 0.0}, r"every one of the 60 features would be dropped"),
        (
            {"samples": "Metadata_Nope == 1"},
            r"samples 'Metadata_Nope == 1' names column\(s\) \['Metadata_Nope'\]",
        ),
        ({"samples": "Metadata_Batch == 'B9'"}, r"chooses no row"),
        ({"source": "SELF", "out": "SELF"}, r"is the input"),
        ({"source": "NOT_A_SET"}, r"does not exist"),
    ],
)
def test_bad_input_raises_and_writes_nothing(generated, tmp_path, overrides, match):
    values = {"source": generated, "out": str(tmp_path / "out"), **overrides}
    for key in ("blocklist", "source", "out"):
        if values.get(key) in ("MISSING", "NOT_A_SET"):
            values[key] = str(tmp_path / values[key])
        if values.get(key) == "SELF":
            values[key] = generated
    before = _leftovers(tmp_path)
    with pytest.raises(RaymmiError, match=match):
        select_features(SelectConfig(**values), tracking=OFF)
    assert _leftovers(tmp_path) == before
    assert open_shard_set(generated).verify() == []


def test_existing_output_needs_overwrite(generated, tmp_path):
    config = SelectConfig(source=generated, out=str(tmp_path / "out"), ops=("na", "variance"))
    first = select_features(config, tracking=OFF)
    with pytest.raises(RaymmiError, match="already exists"):
        select_features(config, tracking=OFF)
    again = SelectConfig(
        source=generated, out=config.out, ops=("variance",), min_variance=1.0, overwrite=True
    )
    second = select_features(again, tracking=OFF)
    assert len(second.features) < len(first.features)
    assert open_shard_set(config.out).manifest.features == second.features


def test_bad_ops_and_thresholds_fail_at_config():
    with pytest.raises(RaymmiError, match=r"'bogus' is not a feature-selection operation"):
        SelectConfig(source="a", out="b", ops=("variance", "bogus"))
    with pytest.raises(RaymmiError, match=r"allowed: \['pearson'\]"):
        SelectConfig(source="a", out="b", corr_method="kendall")
    assert SelectConfig(source="a", out="b").thresholds == Thresholds()
