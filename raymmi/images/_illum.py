"""Illumination functions, as CellProfiler's CorrectIlluminationCalculate/Apply compute them.

CorrectIlluminationCalculate ("Regular", "All" images of a plate, "Each" channel): average the
plate's fields pixel by pixel, smooth the average heavily, and rescale it so its robust minimum
(the 2nd percentile) is 1, values below clipped to 1. CorrectIlluminationApply ("Divide")
divides each field by it. The average is a sum of partial sums, so any number of tasks can
each add up some fields (:class:`IllumSums`) and the driver merges them: a statistics pass
then a broadcast, with no shuffle. Smoothing is a Gaussian of sigma ``max(h, w) / 40`` on the
mean image (CellProfiler offers Gaussian or median filters; the sigma is our choice, wide
enough to leave no cell-scale structure).

Pure: numpy and scipy.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi

_ROBUST_PERCENTILE = 2.0


@dataclasses.dataclass
class IllumSums:
    """Per-channel pixel sums of some fields of one plate (mergeable).

    Attributes
    ----------
    sums
        Channel to float64 array of shape (height, width).
    count
        Fields added.
    """

    sums: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    count: int = 0

    def add(self, images: dict[str, np.ndarray]) -> None:
        """Add one field (channel to array of shape (height, width))."""
        for channel, pixels in images.items():
            if channel in self.sums:
                self.sums[channel] += pixels
            else:
                self.sums[channel] = pixels.astype(np.float64)
        self.count += 1

    def merge(self, other: IllumSums) -> IllumSums:
        """Sum of two partial sums (a new object)."""
        out = IllumSums({c: a.copy() for c, a in self.sums.items()}, self.count)
        for channel, pixels in other.sums.items():
            if channel in out.sums:
                out.sums[channel] += pixels
            else:
                out.sums[channel] = pixels.copy()
        out.count += other.count
        return out


def illumination_function(mean: np.ndarray, *, sigma: float | None = None) -> np.ndarray:
    """Smoothed, rescaled illumination function of one channel.

    Parameters
    ----------
    mean
        The plate's mean field of one channel, shape (height, width).
    sigma
        Gaussian sigma in pixels (default ``max(height, width) / 40``).

    Returns
    -------
    numpy.ndarray
        float32, same shape, >= 1: divide a field by it to correct it.
    """
    sigma = max(mean.shape) / 40.0 if sigma is None else sigma
    smooth = ndi.gaussian_filter(mean.astype(np.float64), sigma, mode="nearest")
    floor = float(np.percentile(smooth, _ROBUST_PERCENTILE))
    if not floor > 0:
        return np.ones(mean.shape, np.float32)
    return np.maximum(smooth / floor, 1.0).astype(np.float32)


def illumination_functions(sums: IllumSums) -> dict[str, np.ndarray]:
    """One illumination function per channel from a plate's merged :class:`IllumSums`."""
    if sums.count == 0:
        msg = "no fields were added: an illumination function needs at least one field"
        raise ValueError(msg)
    return {c: illumination_function(s / sums.count) for c, s in sums.sums.items()}
