"""Chebyshev interpolation of the natural logarithm and its matrix form.

On an interval ``[a, b]`` with ``0 < a < b`` the map
``t = (2x - (a + b)) / (b - a)`` sends ``[a, b]`` to ``[-1, 1]``, and
``p(x) = sum_j c_j T_j(t)`` interpolates ``log x`` at the ``degree + 1``
Chebyshev points of the first kind. ``p(A) X`` is then built with the
three-term recurrence ``T_(j+1) = 2 t T_j - T_(j-1)``, one product with ``A``
per degree.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def log_coefficients(lower: float, upper: float, degree: int) -> np.ndarray:
    """Return the ``degree + 1`` Chebyshev coefficients of ``log`` on
    ``[lower, upper]``.

    The interval must satisfy ``0 < lower < upper``.
    """
    count = degree + 1
    angles = np.pi * (np.arange(count) + 0.5) / count
    nodes = 0.5 * (upper + lower) + 0.5 * (upper - lower) * np.cos(angles)
    values = np.log(nodes)
    orders = np.arange(count)[:, None]
    coefficients = (2.0 / count) * np.cos(orders * angles[None, :]) @ values
    coefficients[0] *= 0.5
    return coefficients


def evaluate(coefficients: np.ndarray, lower: float, upper: float, x: np.ndarray) -> np.ndarray:
    """Evaluate the polynomial at scalar points ``x`` (for error estimates)."""
    t = (2.0 * np.asarray(x, dtype=np.float64) - (upper + lower)) / (upper - lower)
    return np.polynomial.chebyshev.chebval(t, coefficients)


def max_error(coefficients: np.ndarray, lower: float, upper: float, points: int = 2001) -> float:
    """Return ``max |log x - p(x)|`` over ``points`` Chebyshev-spaced points of
    ``[lower, upper]``, an estimate of the uniform error of the interpolant."""
    angles = np.linspace(0.0, np.pi, points)
    x = 0.5 * (upper + lower) + 0.5 * (upper - lower) * np.cos(angles)
    return float(np.max(np.abs(np.log(x) - evaluate(coefficients, lower, upper, x))))


def apply_polynomial(
    matrix: np.ndarray,
    block: np.ndarray,
    coefficients: np.ndarray,
    lower: float,
    upper: float,
) -> np.ndarray:
    """Return ``p(A) X`` for ``A = matrix`` (m x m) and ``X = block`` (m x k).

    Costs ``degree`` products ``A @ T`` (``2 m^2 k`` flops each) and about
    ``6 m k`` flops of vector updates per degree.
    """
    scale = 2.0 / (upper - lower)
    shift = (upper + lower) / (upper - lower)
    previous = block
    result = coefficients[0] * block
    if coefficients.size == 1:
        return result
    current = scale * (matrix @ block) - shift * block
    result += coefficients[1] * current
    for coefficient in coefficients[2:]:
        following = 2.0 * scale * (matrix @ current) - 2.0 * shift * current - previous
        result += coefficient * following
        previous, current = current, following
    return result


def polynomial_flops(order: int, columns: int, degree: int) -> float:
    """FLOPs of :func:`apply_polynomial`: ``degree (2 m^2 k + 6 m k)``."""
    m = float(order)
    k = float(columns)
    return degree * (2.0 * m * m * k + 6.0 * m * k)
