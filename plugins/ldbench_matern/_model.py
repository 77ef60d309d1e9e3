"""Seeded point designs, the coregionalization matrix and the 1-D exponential
log-det."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)

#: Point designs of :func:`design_points`.
DESIGNS = ("random", "halton", "sobol", "maximin", "maxvar")

#: Conditional variance (relative to the kernel variance) below which the
#: ``maxvar`` design places the remaining points by distance, as ``maximin``
#: does. The variances are ``1 - sum(factor**2)``, whose rounding error grows
#: to about k times machine epsilon (2e-13 at k = 1,000), so this leaves a
#: margin of 500 there.
MAXVAR_FLOOR = 1e-10


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


def design_points(
    n: int,
    dim: int,
    seed: int,
    design: str = "random",
    candidates: int = 8,
    correlation: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Return ``n`` points of ``[0, 1)**dim`` in the order of a point design.

    Parameters
    ----------
    n, dim
        Number of points and their dimension.
    seed
        Seed of the design (the scrambling of the low-discrepancy sequences
        and the random draws).
    design
        ``"random"``: independent uniform points (:func:`sample_points`).
        ``"halton"``, ``"sobol"``: a scrambled Halton or Sobol' sequence
        (``scipy.stats.qmc``). ``"maximin"``: farthest-point order on
        ``candidates * n`` scrambled Halton points, each point the candidate
        farthest from all earlier ones. ``"maxvar"``: the same candidates in
        greedy order of largest conditional variance under ``correlation``,
        the order of a pivoted Cholesky factorisation of the candidates'
        kernel matrix.
    candidates
        Candidates per point of ``maximin`` and ``maxvar``.
    correlation
        Kernel as a function of Euclidean distance, with value 1 at 0;
        needed by ``maxvar`` only.

    Returns
    -------
    numpy.ndarray
        Float64 array of shape ``(n, dim)``. For ``random``, ``halton`` and
        ``sobol`` the first k points are the same for every ``n >= k``. For
        ``maximin`` and ``maxvar`` the candidates, and so the points, depend
        on n.

    Notes
    -----
    ``maximin`` costs ``O(candidates * n**2 * dim)`` operations. ``maxvar``
    keeps the n by ``candidates * n`` Cholesky factor of the candidates, so
    it needs ``8 * candidates * n**2`` bytes and about
    ``candidates * n**3`` flops.
    """
    if design == "random":
        return sample_points(n, dim, seed)
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; expected one of {DESIGNS}")
    if candidates < 1:
        raise ValueError(f"candidates = {candidates} must be at least 1")
    rng, _ = _streams(seed)
    if design in ("halton", "sobol"):
        return _low_discrepancy(design, n, dim, rng)
    pool = _low_discrepancy("halton", candidates * n, dim, rng)
    if design == "maximin":
        return pool[_maximin_order(pool, n)]
    if correlation is None:
        raise ValueError("design 'maxvar' needs the correlation function")
    return pool[_maxvar_order(pool, n, correlation)]


def _low_discrepancy(
    design: str, n: int, dim: int, rng: np.random.Generator
) -> np.ndarray:
    """Return the first n points of a scrambled Halton or Sobol' sequence."""
    from scipy.stats import qmc

    engine = qmc.Halton if design == "halton" else qmc.Sobol
    try:
        sampler = engine(dim, scramble=True, rng=rng)
    except TypeError:  # SciPy before 1.15 names the generator 'seed'
        sampler = engine(dim, scramble=True, seed=rng)
    with warnings.catch_warnings():
        # Sobol' prefixes that are not powers of 2 lose the balance of the
        # full net; the sequence is still a valid low-discrepancy design.
        warnings.filterwarnings(
            "ignore", message="The balance properties", category=UserWarning
        )
        return sampler.random(n)


def _maximin_order(pool: np.ndarray, n: int) -> np.ndarray:
    """Return the indices of n pool points in farthest-point order."""
    order = np.empty(n, dtype=np.int64)
    nearest = np.full(pool.shape[0], np.inf)
    index = 0
    for k in range(n):
        order[k] = index
        nearest = np.minimum(nearest, np.sum((pool - pool[index]) ** 2, axis=1))
        index = int(np.argmax(nearest))
    return order


def _maxvar_order(
    pool: np.ndarray, n: int, correlation: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Return the indices of n pool points in greedy largest-variance order.

    ``variance[c]`` is the variance of the process at candidate c given the
    points chosen so far, ``1 - sum_j factor[c, j]**2``, with ``factor`` the
    Cholesky factor of the candidates' kernel matrix in the chosen order.
    """
    size = pool.shape[0]
    # Row k holds column k of the factor, so step k reads the first k rows as
    # one contiguous block.
    factor = np.zeros((n, size))
    variance = np.ones(size)
    nearest = np.full(size, np.inf)
    order = np.empty(n, dtype=np.int64)
    index = 0
    by_distance = False
    for k in range(n):
        order[k] = index
        squared = np.sum((pool - pool[index]) ** 2, axis=1)
        nearest = np.minimum(nearest, squared)
        if not by_distance:
            column = correlation(np.sqrt(squared))
            column -= factor[:k, index] @ factor[:k]
            column /= np.sqrt(variance[index])
            factor[k] = column
            variance -= column**2
        variance[index] = -np.inf
        if not by_distance and variance.max() <= MAXVAR_FLOOR:
            logger.warning(
                "maxvar design: the conditional variances fell below %g after "
                "%d points, so the remaining %d points are placed by distance",
                MAXVAR_FLOOR,
                k + 1,
                n - k - 1,
            )
            by_distance = True
        index = int(np.argmax(nearest if by_distance else variance))
    return order


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
