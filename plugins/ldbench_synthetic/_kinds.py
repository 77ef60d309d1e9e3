"""Eigenvalues, random orthogonal factors and block formation of each kind.

Every ``form_*`` function writes the leading ``order x order`` block in strips
of at most ``rows`` rows, so the memory it needs beyond its inputs is a few
strips of ``rows x order`` float64 values.
"""

from __future__ import annotations

import logging

import numpy as np

from ldbench import BlockWriter

logger = logging.getLogger(__name__)

SPECTRA = ("geometric", "linear", "power")


def rows_per_block(order: int, bytes_per_row: int, budget: int) -> int:
    """Return the number of rows whose working arrays fit in ``budget`` bytes.

    The result is at least 1, so a budget smaller than one row still makes
    progress, and at most ``order``.
    """
    return max(1, min(order, budget // max(1, bytes_per_row)))


def spectrum_eigenvalues(
    spectrum: str, n: int, max_eig: float, min_eig: float, power: float
) -> np.ndarray:
    """Return the ``n`` eigenvalues of a spectrum, in decreasing order.

    Parameters
    ----------
    spectrum
        ``"geometric"``: ``lambda_i = max_eig * (min_eig / max_eig)**((i-1)/(n-1))``;
        ``"linear"``: evenly spaced from ``max_eig`` down to ``min_eig``;
        ``"power"``: ``lambda_i = max_eig * i**(-power)``, ignoring ``min_eig``.
        The index ``i`` runs from 1 to ``n``; with ``n = 1`` every spectrum is
        ``[max_eig]``.
    n
        Number of eigenvalues.
    max_eig, min_eig
        Largest and smallest eigenvalue (positive, ``min_eig <= max_eig``).
    power
        Decay exponent of the ``"power"`` spectrum (non-negative).

    Returns
    -------
    numpy.ndarray
        Float64 array of shape ``(n,)``.
    """
    if n == 1:
        return np.array([max_eig], dtype=np.float64)
    fraction = np.arange(n, dtype=np.float64) / (n - 1)
    if spectrum == "geometric":
        values = max_eig * (min_eig / max_eig) ** fraction
        values[-1] = min_eig
    elif spectrum == "linear":
        values = max_eig + (min_eig - max_eig) * fraction
        values[-1] = min_eig
    elif spectrum == "power":
        values = max_eig * np.arange(1, n + 1, dtype=np.float64) ** (-power)
    else:
        raise ValueError(f"unknown spectrum {spectrum!r}; use one of {list(SPECTRA)}")
    return values


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """Return a Haar-distributed random orthogonal ``n x n`` matrix.

    The matrix is the Q factor of the QR decomposition of a standard Gaussian
    matrix drawn with ``numpy.random.default_rng(seed)``, with the columns'
    signs chosen so that ``R`` has a positive diagonal. Without that sign
    choice the distribution of Q would depend on the sign convention of the
    QR routine and would not be Haar.
    """
    logger.debug("drawing a random orthogonal matrix of order %d (seed %d)", n, seed)
    rng = np.random.default_rng(seed)
    gaussian = rng.standard_normal((n, n))
    q, r = np.linalg.qr(gaussian)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    q *= signs
    return q


def form_spectrum(
    order: int, q: np.ndarray, eigenvalues: np.ndarray, out: BlockWriter, budget: int
) -> None:
    """Write the leading block of ``Q diag(eigenvalues) Q^T`` into ``out``.

    The leading block is ``Q[:order] diag(eigenvalues) Q[:order]^T``. Each
    strip ``A[r0:r1, r0:order]`` is computed once, and the part right of its
    diagonal square is also written transposed below it, so the result is
    exactly symmetric and only the upper triangle is computed.
    """
    n = q.shape[0]
    rows = rows_per_block(order, 8 * (n + 2 * order), budget)
    for r0 in range(0, order, rows):
        r1 = min(order, r0 + rows)
        scaled = q[r0:r1] * eigenvalues
        strip = scaled @ q[r0:order].T
        width = r1 - r0
        square = strip[:, :width]
        strip[:, :width] = 0.5 * (square + square.T)
        out.write(r0, r0, strip)
        if r1 < order:
            out.write(r1, r0, np.ascontiguousarray(strip[:, width:].T))


def form_identity(order: int, scale: float, out: BlockWriter, budget: int) -> None:
    """Write the leading block of ``scale * I`` into ``out``."""
    rows = rows_per_block(order, 8 * order, budget)
    for r0 in range(0, order, rows):
        r1 = min(order, r0 + rows)
        strip = np.zeros((r1 - r0, order))
        index = np.arange(r1 - r0)
        strip[index, r0 + index] = scale
        out.write(r0, 0, strip)


def form_kms(order: int, rho: float, out: BlockWriter, budget: int) -> None:
    """Write the leading block of the Kac-Murdock-Szego matrix ``rho**|i-j|``.

    The powers ``rho**k`` for ``k < order`` are computed once, so every entry
    has the same value whatever the order or the strip size.
    """
    powers = np.power(rho, np.arange(order, dtype=np.float64))
    rows = rows_per_block(order, 16 * order, budget)
    columns = np.arange(order)
    for r0 in range(0, order, rows):
        r1 = min(order, r0 + rows)
        lags = np.abs(np.arange(r0, r1)[:, None] - columns[None, :])
        out.write(r0, 0, powers[lags])
