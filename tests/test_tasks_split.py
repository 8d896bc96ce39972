"""The train/test split by batch and the bad inputs it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from raymmi import tasks as T


def test_batch_split_masks():
    batch = np.array(["s1d1", "s1d2", "s2d1", "s1d1"])
    train, test = T.batch_split(batch, train_batches=["s1d1", "s2d1"], test_batches=["s1d2"])
    np.testing.assert_array_equal(train, [True, False, True, True])
    np.testing.assert_array_equal(test, [False, True, False, False])


@pytest.mark.parametrize(
    ("train", "test", "match"),
    [
        (["s1", "s2"], ["s2"], r"overlap in \['s2'\]"),
        (["s1"], [], "test_batches is empty"),
        ([], ["s1"], "train_batches is empty"),
        (["s1"], ["s9"], r"batches \['s9'\] have no cells; present: \['s1', 's2'\]"),
        (["s1"], ["s1"], "overlap"),
    ],
)
def test_batch_split_refuses_bad_splits(train, test, match):
    with pytest.raises(ValueError, match=match):
        T.batch_split(np.array(["s1", "s2", "s1"]), train_batches=train, test_batches=test)


def test_one_batch_cannot_be_split():
    # fewer than two batches: whatever is named, one side is empty or they overlap
    with pytest.raises(ValueError, match="overlap"):
        T.batch_split(np.array(["s1", "s1"]), train_batches=["s1"], test_batches=["s1"])


def test_nan_scores_print_why():
    from raymmi.run import score_text

    assert score_text("nmi", 0.61234) == "0.6123"
    assert score_text("cells_test", 289.0) == "289" and score_text("dims", 50.0) == "50"
    assert (
        score_text("asw_batch", float("nan"), batches=1) == "n/a (one batch in the scored cells)"
    )
    assert score_text("ilisi", float("nan")) == "n/a (one batch in the scored cells)"
    assert score_text("ti_cons", float("nan")).startswith("n/a (no pseudotime")
    assert (
        score_text("asw_batch", float("nan"), batches=2) == "n/a (not computable on these cells)"
    )
