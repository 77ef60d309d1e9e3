"""Metric definitions: relative error, TFLOPs, wall time and dollar cost."""

from __future__ import annotations

import math
from typing import Any


def relative_error(estimate: float, reference: float | None) -> float | None:
    """Return ``|estimate - reference| / |reference|``, or None without a reference.

    Both are natural log-determinants. A reference of 0 gives the absolute
    error instead, and two equal infinities give 0.
    """
    if reference is None or estimate is None:
        return None
    estimate, reference = float(estimate), float(reference)
    if math.isinf(reference) or math.isinf(estimate):
        return 0.0 if estimate == reference else math.inf
    if reference == 0.0:
        return abs(estimate)
    return abs(estimate - reference) / abs(reference)


def tflops(flops: float) -> float:
    """Convert a FLOP count (multiply-add = 2) to units of 10**12."""
    return float(flops) / 1e12


def price_per_hour(pricing: dict[str, Any], device: str) -> float:
    """Return the suite's price in dollars per hour for ``"cpu"`` or ``"gpu"``."""
    key = "gpu_per_hour" if device.startswith(("gpu", "cuda")) else "cpu_per_hour"
    return float(pricing[key])


def cost(
    pricing: dict[str, Any],
    formation_seconds: float,
    formation_device: str,
    solve_seconds: float,
    solve_device: str,
) -> float:
    """Return the estimated cost in dollars: the sum over the formation and
    solve phases of device-hours times the device's price per hour."""
    return (
        formation_seconds / 3600.0 * price_per_hour(pricing, formation_device)
        + solve_seconds / 3600.0 * price_per_hour(pricing, solve_device)
    )
