"""Standard error, interval and sample summary from imate's SLQ ``info``.

imate 0.29 reports ``absolute_error = z * sd / sqrt(k)``, where ``sd`` is the
sample standard deviation (ddof=1) of the ``k`` Monte-Carlo samples it kept
after removing outliers, and ``z = sqrt(2) * erfinv(confidence_level)`` is the
two-sided normal quantile. Dividing by ``z`` gives the standard error of the
mean. Both figures measure the sampling spread only and ignore the bias of a
Lanczos degree that is too small.
"""

from __future__ import annotations

import logging
import math
from statistics import NormalDist
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

INTERVAL_LEVEL = 0.95


def two_sided_quantile(level: float) -> float:
    """Return ``z`` with ``P(|N(0, 1)| <= z) = level``, such as 1.95996 for 0.95."""
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def standard_error(absolute_error: float, confidence_level: float) -> float | None:
    """Return the standard error behind imate's confidence half-width.

    Returns ``None`` when imate reports no finite error, which happens when
    fewer than two samples remain.
    """
    if not math.isfinite(absolute_error):
        return None
    return absolute_error / two_sided_quantile(confidence_level)


def normal_interval(
    estimate: float, stderr: float | None, level: float = INTERVAL_LEVEL
) -> tuple[float, float] | None:
    """Return the normal ``level`` interval ``estimate +- z * stderr``."""
    if stderr is None:
        return None
    half_width = two_sided_quantile(level) * stderr
    return (estimate - half_width, estimate + half_width)


def sample_summary(info: dict[str, Any]) -> dict[str, Any]:
    """Return imate's sample counts, sample spread and error as JSON values.

    ``num_samples_used`` counts every computed sample, outliers included, as
    imate does. ``samples_mean`` is imate's estimate (outliers left out).
    ``samples_std``
    (ddof=1), ``samples_min`` and ``samples_max`` cover every computed sample,
    outliers included, in natural-log units.
    """
    convergence = info["convergence"]
    error = info["error"]
    samples = np.asarray(convergence["samples"], dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    spread = float(np.std(samples, ddof=1)) if samples.size > 1 else None
    return {
        "num_samples_used": int(convergence["num_samples_used"]),
        "num_outliers": int(convergence["num_outliers"]),
        "samples_mean": float(convergence["samples_mean"]),
        "samples_std": spread,
        "samples_min": float(samples.min()) if samples.size else None,
        "samples_max": float(samples.max()) if samples.size else None,
        "imate_absolute_error": _finite_or_none(error["absolute_error"]),
        "imate_relative_error": _finite_or_none(error["relative_error"]),
        "imate_confidence_level": float(error["confidence_level"]),
    }


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
