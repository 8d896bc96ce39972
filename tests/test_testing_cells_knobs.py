"""Generator knobs for the SAILERX claims: shared RNA programs, ATAC type signal."""

from __future__ import annotations

import numpy as np
import pytest

from raymmi import testing
from raymmi.testing import _cell_globals

BASE = {"n_cells": 300, "n_genes": 200, "n_peaks": 400, "n_cell_types": 4, "chunk_size": 150}


def _same_cells(a: testing.CellSetSpec, b: testing.CellSetSpec) -> None:
    for chunk in range(testing.n_chunks(a)):
        x, y = testing.generate_cells(a, chunk), testing.generate_cells(b, chunk)
        assert x.obs.equals(y.obs)
        for name in x.modalities:
            mx, my = x.modalities[name], y.modalities[name]
            if hasattr(mx, "toarray"):
                for field in ("indptr", "indices", "data"):
                    assert np.array_equal(getattr(mx, field), getattr(my, field))
            else:
                assert np.array_equal(mx, my)


@pytest.mark.parametrize("kind", ["multiome", "cite"])
def test_neutral_knob_values_are_bit_identical_to_the_defaults(kind):
    default = testing.CellSetSpec(kind=kind, seed=3, **BASE)
    assert default.rna_type_programs is None and default.atac_type_signal == 1.0
    explicit = testing.CellSetSpec(
        kind=kind, seed=3, rna_type_programs=4, atac_type_signal=1.0, **BASE
    )
    _same_cells(default, explicit)


def test_shared_rna_programs():
    spec = testing.CellSetSpec(seed=1, rna_type_programs=2, **BASE)
    g, ref = _cell_globals(spec), _cell_globals(testing.CellSetSpec(seed=1, **BASE))
    # type t expresses program t % 2: types 0/2 and 1/3 share their RNA, 0/1 do not
    assert np.array_equal(g.rna_log[0], g.rna_log[2])
    assert np.array_equal(g.rna_log[1], g.rna_log[3])
    assert not np.allclose(g.rna_log[0], g.rna_log[1])
    assert np.array_equal(g.rna_log[:2], ref.rna_log[:2])  # programs 0, 1 unchanged
    # the ATAC still separates all four types, exactly as without the knob
    assert np.array_equal(g.atac_cdf, ref.atac_cdf)
    assert np.array_equal(g.atac_total, ref.atac_total)


def test_one_rna_program_leaves_types_indistinguishable_by_rna():
    spec = testing.CellSetSpec(seed=2, rna_type_programs=1, **BASE)
    g = _cell_globals(spec)
    assert all(np.array_equal(g.rna_log[0], g.rna_log[t]) for t in range(4))


def test_zero_atac_signal_removes_type_differences_from_peaks():
    spec = testing.CellSetSpec(seed=1, atac_type_signal=0.0, n_batches=2, **BASE)
    g = _cell_globals(spec)
    n_types, n_batches, n_peaks = 4, 2, BASE["n_peaks"]
    cdf = g.atac_cdf.reshape(n_types, n_batches, n_peaks) - np.arange(n_types * n_batches).reshape(
        n_types, n_batches, 1
    )
    for t in range(1, n_types):
        np.testing.assert_allclose(cdf[t], cdf[0], atol=1e-12)
        np.testing.assert_allclose(g.atac_total[t], g.atac_total[0], rtol=1e-12)
    # with the default signal the types differ
    ref = _cell_globals(testing.CellSetSpec(seed=1, n_batches=2, **BASE))
    assert not np.allclose(ref.atac_total[1], ref.atac_total[0])
    # and the RNA is untouched
    assert np.array_equal(g.rna_log, ref.rna_log)


def test_stronger_atac_signal_spreads_type_profiles():
    def spread(signal: float) -> float:
        spec = testing.CellSetSpec(seed=1, n_batches=1, atac_type_signal=signal, **BASE)
        cdf = _cell_globals(spec).atac_cdf.reshape(4, -1) - np.arange(4)[:, None]
        share = np.diff(cdf, axis=1, prepend=0.0)
        return float(np.abs(share - share.mean(axis=0)).sum())

    assert spread(0.0) < 1e-9 < spread(0.5) < spread(1.0) < spread(2.0)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"rna_type_programs": 0}, "rna_type_programs=0 must be between 1 and n_cell_types=4"),
        ({"rna_type_programs": 5}, "rna_type_programs=5"),
        ({"atac_type_signal": -0.5}, "atac_type_signal=-0.5"),
        ({"atac_type_signal": float("nan")}, "atac_type_signal=nan"),
    ],
)
def test_knob_validation(changes, match):
    with pytest.raises(testing.SpecError, match=match):
        testing.CellSetSpec(**{**BASE, **changes})
