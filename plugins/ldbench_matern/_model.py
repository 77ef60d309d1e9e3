"""Seeded points, the coregionalization matrix and the 1-D exponential log-det."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Return independent generators for the points and for the outputs."""
    points, outputs = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(points), np.random.default_rng(outputs)


def sample_points(n: int, dim: int, seed: int, sort: bool = False) -> np.ndarray:
    """Return ``n`` points drawn uniformly from ``[0, 1)**dim``.

    Parameters
    ----------
    n, dim
        Number of points and their dimension.
    seed
        Seed; the first ``k`` points are the same for every ``n >= k``.
    sort
        Sort the points in increasing order (``dim`` must be 1).

    Returns
    -------
    numpy.ndarray
        Float64 array of shape ``(n, dim)``.
    """
    rng, _ = _streams(seed)
    points = rng.uniform(size=(n, dim))
    if sort:
        if dim != 1:
            raise ValueError(f"sorting needs dim = 1, got dim = {dim}")
        points = np.sort(points, axis=0)
    return points


def coregionalization_matrix(outputs: int, seed: int) -> np.ndarray:
    """Return the seeded ``outputs x outputs`` coregionalization matrix B.

    B is the correlation matrix of ``W W^T / d + diag(kappa)``, with ``W`` a
    standard Gaussian ``d x d`` matrix and ``kappa`` uniform in
    ``[0.1, 1)``, so B is symmetric positive definite with a unit diagonal
    and the output variances stay equal to the kernel variance. For one
    output B is ``[[1.0]]``.
    """
    if outputs == 1:
        return np.ones((1, 1))
    _, rng = _streams(seed)
    w = rng.standard_normal((outputs, outputs))
    kappa = rng.uniform(0.1, 1.0, size=outputs)
    covariance = w @ w.T / outputs + np.diag(kappa)
    scale = 1.0 / np.sqrt(np.diag(covariance))
    b = covariance * np.outer(scale, scale)
    b = 0.5 * (b + b.T)
    np.fill_diagonal(b, 1.0)
    return b


def exponential_logdet_1d(
    points: np.ndarray, length_scale: float, variance: float
) -> tuple[float, float]:
    """Return ``(sign, log|det|)`` of the exponential kernel on 1-D points.

    The kernel ``variance * exp(-|x_i - x_j| / length_scale)`` (Matern with
    ``nu = 1/2``) on points sorted as ``x_1 <= ... <= x_k`` is the covariance
    of an Ornstein-Uhlenbeck process, a Markov chain, so

        log det K = k log(variance) + sum_i log(1 - exp(-2 Delta_i / length_scale))

    with ``Delta_i = x_(i+1) - x_i``. A permutation of the points does not
    change the determinant. Coinciding points make K singular: the result is
    then ``(0.0, -inf)``.
    """
    x = np.sort(np.asarray(points, dtype=np.float64).ravel())
    gaps = np.diff(x)
    if (gaps == 0).any():
        return 0.0, -np.inf
    # -expm1(-t) = 1 - exp(-t) without cancellation for small gaps.
    terms = np.log(-np.expm1(-2.0 * gaps / length_scale))
    return 1.0, float(x.size * np.log(variance) + terms.sum())
