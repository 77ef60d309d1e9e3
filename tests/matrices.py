"""Dense test matrices with closed-form log-determinants, shared by solver tests."""

from __future__ import annotations

import numpy as np


def kms_matrix(order: int, rho: float) -> np.ndarray:
    """Kac-Murdock-Szego matrix rho^|i-j|, log-det (order - 1) ln(1 - rho^2)."""
    index = np.arange(order)
    return rho ** np.abs(index[:, None] - index[None, :])


def spd_with_spectrum(
    order: int, seed: int, low: float = 0.5, high: float = 20.0
) -> tuple[np.ndarray, np.ndarray]:
    """Return Q diag(eigenvalues) Q^T and its eigenvalues, drawn uniformly in
    [low, high], with Q from the QR factors of a seeded Gaussian matrix."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((order, order)))
    eigenvalues = rng.uniform(low, high, order)
    array = (q * eigenvalues) @ q.T
    return (array + array.T) / 2.0, eigenvalues
