"""Train/test split of paired cells by batch, checked the way the challenge splits them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def batch_split(
    batch: np.ndarray,
    *,
    train_batches: Sequence[str],
    test_batches: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the train and test cells, by batch.

    Parameters
    ----------
    batch
        Batch per cell, shape (n_cells,).
    train_batches, test_batches
        Batch names of each side; non-empty, disjoint, and all present in ``batch``.

    Returns
    -------
    train, test : numpy.ndarray
        Boolean masks of shape (n_cells,).

    Raises
    ------
    ValueError
        If a side is empty, the sides overlap, or a named batch has no cells.
    """
    batch = np.asarray(batch).astype(str)
    if batch.ndim != 1:
        msg = f"batch needs one label per cell, shape (n_cells,); got {batch.shape}"
        raise ValueError(msg)
    present = sorted({str(b) for b in batch})
    train_set = {str(b) for b in train_batches}
    test_set = {str(b) for b in test_batches}
    for side, names in (("train_batches", train_set), ("test_batches", test_set)):
        if not names:
            msg = f"{side} is empty; name at least one batch (present: {present})"
            raise ValueError(msg)
    if overlap := train_set & test_set:
        msg = (
            f"train_batches and test_batches overlap in {sorted(overlap)}; a batch is either "
            "trained on or held out, never both"
        )
        raise ValueError(msg)
    if absent := (train_set | test_set) - set(present):
        msg = f"batches {sorted(absent)} have no cells; present: {present}"
        raise ValueError(msg)
    return np.isin(batch, sorted(train_set)), np.isin(batch, sorted(test_set))
