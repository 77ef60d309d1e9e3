"""Spectral bounds of a symmetric matrix from a few Lanczos steps."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh_tridiagonal

logger = logging.getLogger(__name__)

#: A ``beta`` below this fraction of the largest ``|alpha|`` ends the
#: iteration: the Krylov space is invariant, so its Ritz values are exact.
BREAKDOWN = 1e-12


@dataclass
class RitzBounds:
    """Extreme Ritz values of a Lanczos run and their residual norms.

    Attributes
    ----------
    smallest, largest
        Smallest and largest Ritz value.
    smallest_residual, largest_residual
        ``|beta_l s_l|`` of the matching Ritz vector: some eigenvalue of the
        matrix lies within this distance of the Ritz value.
    steps
        Lanczos steps run (fewer than requested after a breakdown).
    """

    smallest: float
    largest: float
    smallest_residual: float
    largest_residual: float
    steps: int


def lanczos_bounds(matrix: np.ndarray, steps: int, rng: np.random.Generator) -> RitzBounds:
    """Run ``steps`` Lanczos steps with full reorthogonalisation from a random
    start vector and return the extreme Ritz values.

    The cost is given by :func:`lanczos_flops`.
    """
    order = matrix.shape[0]
    steps = min(steps, order)
    basis = np.empty((order, steps))
    alphas = np.empty(steps)
    betas = np.empty(steps)
    vector = rng.standard_normal(order)
    vector /= np.linalg.norm(vector)
    done = steps
    for j in range(steps):
        basis[:, j] = vector
        w = matrix @ vector
        alphas[j] = vector @ w
        w -= alphas[j] * vector
        if j > 0:
            w -= betas[j - 1] * basis[:, j - 1]
        # One pass of full reorthogonalisation keeps the basis orthogonal to
        # working precision for the few steps used here.
        w -= basis[:, : j + 1] @ (basis[:, : j + 1].T @ w)
        betas[j] = np.linalg.norm(w)
        if betas[j] <= BREAKDOWN * max(np.max(np.abs(alphas[: j + 1])), 1e-300):
            done = j + 1
            betas[j] = 0.0
            break
        vector = w / betas[j]
    values, vectors = eigh_tridiagonal(alphas[:done], betas[: done - 1])
    residuals = np.abs(betas[done - 1] * vectors[-1, :])
    logger.debug("lanczos: %d steps, Ritz values %.3g..%.3g", done, values[0], values[-1])
    return RitzBounds(
        smallest=float(values[0]),
        largest=float(values[-1]),
        smallest_residual=float(residuals[0]),
        largest_residual=float(residuals[-1]),
        steps=done,
    )


def lanczos_flops(order: int, steps: int) -> float:
    """FLOPs of :func:`lanczos_bounds` without a breakdown.

    Per step j (0-based): ``2 m^2`` for the product with the matrix, ``9 m`` for
    the recurrence and the normalisation, ``4 m (j + 1)`` for the
    reorthogonalisation; plus about ``6 l^2`` for the ``l x l`` tridiagonal
    eigenproblem (an estimate of LAPACK's ``stemr``).
    """
    m = float(order)
    steps = min(steps, order)
    total = 0.0
    for j in range(steps):
        total += 2.0 * m * m + 9.0 * m + 4.0 * m * (j + 1)
    return total + 6.0 * float(steps) ** 2
