"""Cell Painting plates: :func:`generate_plate` and :func:`generate_plates`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from raymmi import schema
from raymmi.testing._plates import (
    COMPOUND,
    PLATE_LOCATION_SD,
    PLATE_LOG_SCALE_SD,
    SITE_NOISE_SD,
    PlateSetSpec,
    _compound_name,
    _correlated,
    _plate_batch,
    _plate_globals,
    _plate_id,
    _well_names,
    feature_names,
)

# ==============================================================================================
# Plates: generation
# ==============================================================================================


def generate_plate(spec: PlateSetSpec, plate_index: int) -> pd.DataFrame:
    """Generate one plate's profiles, deterministically from ``(spec, plate_index)``.

    Each row is ``mean + sd * (batch_shift + plate_shift + exp(batch_log_scale +
    plate_log_scale) * (noise + compound_effect))`` per feature, with correlated noise (factor
    model), compound effects shared by replicate wells, and the planted zero-spread features
    (:func:`planted_zero_spread`) set to the plate's location.

    Parameters
    ----------
    spec
        The plate set.
    plate_index
        0 ... ``spec.n_plates - 1``.

    Returns
    -------
    pandas.DataFrame
        ``wells_per_plate * sites_per_well`` rows in well order (then site order), with columns
        ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` (int, only when
        ``sites_per_well > 1``), ``Metadata_Batch``, ``Metadata_Compound`` (``"DMSO"`` in negcon
        wells), ``Metadata_is_negcon`` (bool), then the float32 features of
        :func:`feature_names`.
    """
    if not 0 <= plate_index < spec.n_plates:
        msg = f"plate_index={plate_index!r} must be between 0 and {spec.n_plates - 1}"
        raise ValueError(msg)
    g = _plate_globals(spec)
    rng = np.random.default_rng([spec.seed, plate_index])
    n_wells, n_sites, p = spec.wells_per_plate, spec.sites_per_well, spec.n_features
    batch = _plate_batch(spec, plate_index)

    scale = spec.plate_effect_scale
    location = _correlated(rng, 1, g.loadings, g.unique_sd)[0] * (PLATE_LOCATION_SD * scale)
    log_scale = rng.normal(0.0, PLATE_LOG_SCALE_SD * scale, p)
    location = g.batch_location[batch] + location
    gain = (np.exp(g.batch_log_scale[batch] + log_scale) * g.noise_sd).astype(np.float32)
    center = g.mean + g.noise_sd * location

    compound = np.full(n_wells, -1, dtype=np.int64)
    n_slots = g.slot_wells.shape[0]
    slot_compound = (plate_index * n_slots + np.arange(n_slots)) % spec.n_compounds
    compound[g.slot_wells] = slot_compound[:, None]

    z = _correlated(rng, n_wells, g.loadings, g.unique_sd)
    treated = compound >= 0
    z[treated] += g.effects[compound[treated]]
    if n_sites > 1:
        z = np.repeat(z, n_sites, axis=0)
        z += SITE_NOISE_SD * _correlated(rng, n_wells * n_sites, g.loadings, g.unique_sd)
    values = z * gain
    values += center.astype(np.float32)

    negcon = compound < 0
    if plate_index in g.zero_plates:
        values[:, g.zero_features] = center[g.zero_features].astype(np.float32)
        rows = np.repeat(negcon, n_sites)
        cols = g.negcon_zero_features
        values[np.ix_(rows, cols)] = center[cols].astype(np.float32)

    # compound -1 (negcon wells) indexes the last name, DMSO
    names = np.array([_compound_name(i) for i in range(spec.n_compounds)] + ["DMSO"], object)
    meta: dict[str, object] = {
        schema.PLATE: _plate_id(plate_index),
        schema.WELL: np.repeat(np.array(_well_names(n_wells), dtype=object), n_sites),
    }
    if n_sites > 1:
        meta[schema.SITE] = np.tile(np.arange(1, n_sites + 1, dtype=np.int64), n_wells)
    meta[schema.BATCH] = f"B{batch + 1}"
    meta[COMPOUND] = np.repeat(names[compound], n_sites)
    meta[schema.NEGCON] = np.repeat(negcon, n_sites)
    frame = pd.DataFrame(meta, index=pd.RangeIndex(n_wells * n_sites))
    features = pd.DataFrame(values, columns=feature_names(spec), copy=False)
    return pd.concat([frame, features], axis=1)


def generate_plates(spec: PlateSetSpec) -> pd.DataFrame:
    """All plates of a (small) set in one frame: :func:`generate_plate` for each, concatenated.

    Returns
    -------
    pandas.DataFrame
        ``n_plates * wells_per_plate * sites_per_well`` rows, columns as in
        :func:`generate_plate`.
    """
    frames = [generate_plate(spec, i) for i in range(spec.n_plates)]
    return pd.concat(frames, ignore_index=True)
